"""The studio's run in-process: steps drawn beside the sampler arrive in order, with the tiny decoder when the model
has one (the live default); a cancelled run stops and a failure in drawing reaches the run; torch's thread count
is what it was after a run."""

import pytest
import torch

from diffx.models.tiny_decoder import TinyDecoder, TinyDecoderConfig
from diffx.pipeline.settings import resolve_settings
from diffx.studio import engine
from diffx.studio.engine import generation_work
from diffx.studio.runs import RunCancelled
from diffx.views.steps import X0_LABELS
from tests.models.sd3_tiny import tiny_sd3
from tests.tiny import STEPS, tiny_settings


@pytest.fixture
def model_with_decoder(tiny_model):
    torch.manual_seed(0)
    tiny_model.tiny_decoder = TinyDecoder(TinyDecoderConfig(4, (8,))).eval()  # tiny()'s VAE is f2
    yield tiny_model
    tiny_model.tiny_decoder = None


def _run(model, preview="auto", check=lambda: None):
    events = []
    settings = resolve_settings(model, tiny_settings(seed=3))
    trace = generation_work(model, settings, preview)(lambda kind, data: events.append((kind, data)), check)
    return events, trace


def test_the_live_default_is_the_tiny_decoder_and_steps_arrive_in_order(model_with_decoder):
    threads = torch.get_num_threads()
    events, trace = _run(model_with_decoder)
    assert dict(events)["start"]["x0_label"] == X0_LABELS["tiny"]
    steps = [data for kind, data in events if kind == "step"]
    assert [step["index"] for step in steps] == list(range(STEPS)) and all(step["decoded"] for step in steps)
    kinds = [kind for kind, _ in events]
    assert kinds.index("image") > max(i for i, kind in enumerate(kinds) if kind == "step")  # waits for its drawing
    assert trace.num_steps == STEPS and torch.get_num_threads() == threads
    # Then every step's x̂0 again, as the VAE draws it, to replace the preview.
    refined = [data for kind, data in events if kind == "refine"]
    assert [data["index"] for data in refined] == list(range(STEPS)) and kinds[-1] == "refine"
    assert all(data["x0_label"] == X0_LABELS["vae"] and data["decoded"] for data in refined)
    assert refined[0]["frames"]["x0"] != steps[0]["frames"]["x0"]  # another decoder, another picture


def test_without_a_tiny_decoder_the_live_default_is_as_the_cli_s(tiny_model):
    events, _ = _run(tiny_model)
    assert dict(events)["start"]["x0_label"] in (X0_LABELS["vae"], X0_LABELS["fast"])
    assert len([kind for kind, _ in events if kind == "step"]) == STEPS
    assert "refine" not in dict(events)  # the steps were drawn as the CLI draws them already


def test_a_cancelled_run_stops_at_its_next_step(model_with_decoder):
    calls = []

    def check():
        calls.append(1)
        if len(calls) > 1:
            raise RunCancelled

    with pytest.raises(RunCancelled):
        _run(model_with_decoder, check=check)
    assert len(calls) == 2  # the second step's check stopped it


def test_a_failure_while_drawing_reaches_the_run(model_with_decoder, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("drawing failed")

    monkeypatch.setattr(engine, "step_frames", broken)
    with pytest.raises(ValueError, match="drawing failed"):
        _run(model_with_decoder)


def test_a_flow_model_s_schedule_chart_shows_one_minus_s() -> None:
    model = tiny_sd3()
    chart, markers = engine.schedule_chart(model, resolve_settings(model, tiny_settings(sampler="euler")))
    assert "1 − s — the share of x₀ in x_s" in chart and len(markers["abar"]) == STEPS
