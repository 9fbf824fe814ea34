"""A fuzzer over every reader of what a user hands diffx (Hypothesis): malformed inputs made from valid ones —
metadata values of the wrong type, NaN/inf/empty tensors, truncated and corrupted files, hostile configs, odd option
text. The invariant for each: a valid result, or a `DiffxError` of one line of at most 300 characters; never another
exception, never a file written. Examples are bounded (and derandomized, so CI is reproducible); Hypothesis prints
the failing example and how to reproduce it."""

import json
import math
import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from diffx.cli.options import parse_list, parse_size
from diffx.devices import resolve_device
from diffx.errors import ERROR_LINE_CHARS, DiffxError
from diffx.images import load_image
from diffx.models.configs import tiny
from diffx.trace.record import load_trace, save_trace
from diffx.trace.tracer import generate_traced
from diffx.views.steps import trace_frames
from diffx.weights.config_schema import read_model_config
from tests.tiny import tiny_settings

# DIFFX_FUZZ_EXAMPLES=2000 fuzzes deeper (randomly) than the suite's bounded, reproducible run.
EXAMPLES = int(os.environ.get("DIFFX_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize="DIFFX_FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40),
                        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=50),
                        st.lists(st.integers(-3, 3), max_size=4), st.dictionaries(st.text(max_size=5), st.integers(),
                                                                                    max_size=2))
SHORT = ERROR_LINE_CHARS


def holds(call, *args):
    """The invariant: a result, or a one-line DiffxError of at most 300 characters (what `error:` prints)."""
    try:
        return call(*args)
    except DiffxError as error:
        message = str(error)
        assert "\n" not in message and len(message) <= SHORT, message
        return None


def paths(data: dict, prefix: tuple = ()) -> list[tuple]:
    """Every nested key path of a JSON object."""
    found = []
    for key, value in data.items():
        found.append((*prefix, key))
        if isinstance(value, dict):
            found += paths(value, (*prefix, key))
    return found


def set_path(data: dict, path: tuple, value) -> dict:
    data = json.loads(json.dumps(data))
    inner = data
    for key in path[:-1]:
        inner = inner[key]
    inner[path[-1]] = value
    return data


@given(st.text(max_size=40))
@FUZZ
def test_device_strings(text):
    holds(resolve_device, text)


@given(st.text(max_size=400), st.sampled_from([int, float]))
@FUZZ
def test_option_lists_and_sizes(text, kind):
    holds(parse_list, text, kind, "--scales")
    holds(parse_size, text)


@given(st.data())
@FUZZ
def test_model_folder_configs(tmp_path_factory, data):
    config = tiny().to_dict()
    path = data.draw(st.sampled_from(paths(config)))
    damaged = set_path(config, path, data.draw(JSON_VALUES))
    file = tmp_path_factory.mktemp("config") / "config.json"
    file.write_text(json.dumps(damaged))
    holds(read_model_config, file)


@given(st.binary(max_size=64), st.integers(0, 200), st.sampled_from(["cut", "flip", "append"]))
@FUZZ
def test_pictures(tmp_path_factory, noise, where, how):
    folder = tmp_path_factory.mktemp("picture")
    Image.new("RGB", (16, 12), "red").save(folder / "good.png")
    data = (folder / "good.png").read_bytes()
    where %= len(data)
    damaged = {"cut": data[:where], "flip": data[:where] + noise + data[where + len(noise):],
               "append": data + noise}[how]
    (folder / "bad.png").write_bytes(damaged)
    holds(load_image, folder / "bad.png")
    assert sorted(p.name for p in folder.iterdir()) == ["bad.png", "good.png"]


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory):
    torch.manual_seed(0)
    from diffx.models.stable_diffusion import build

    model = build(tiny()).eval()
    trace = generate_traced(model, tiny_settings(guidance=3.0)).traces[0]
    return save_trace(trace, tmp_path_factory.mktemp("trace") / "good.safetensors")


def rewritten(source: Path, target: Path, meta=None, tensors=None) -> Path:
    with safe_open(str(source), framework="pt") as handle:
        header = handle.metadata()
        old = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    if meta is not None:
        header = {**header, "diffx_trace": json.dumps(meta)}
    save_file({key: value.contiguous() for key, value in {**old, **(tensors or {})}.items()}, str(target),
              metadata=header)
    return target


@given(st.data())
@FUZZ
def test_trace_metadata(trace_file, tmp_path_factory, data):
    with safe_open(str(trace_file), framework="pt") as handle:
        meta = json.loads(handle.metadata()["diffx_trace"])
    path = data.draw(st.sampled_from(paths(meta)))
    damaged = set_path(meta, path, data.draw(JSON_VALUES))
    trace = holds(load_trace, rewritten(trace_file, tmp_path_factory.mktemp("meta") / "bad.safetensors", meta=damaged))
    if trace is not None:  # a trace that loads also draws: its metadata was checked, not just parsed
        holds(trace_frames, trace, "fast")


@given(st.data())
@FUZZ
def test_trace_tensors(trace_file, tmp_path_factory, data):
    with safe_open(str(trace_file), framework="pt") as handle:
        keys = sorted(handle.keys())
        key = data.draw(st.sampled_from(keys))
        tensor = handle.get_tensor(key)
    how = data.draw(st.sampled_from(["nan", "inf", "empty", "shorter", "flat", "cast"]))
    if how in ("nan", "inf") and tensor.is_floating_point() and tensor.numel():
        flat = tensor.clone().reshape(-1)
        flat[data.draw(st.integers(0, flat.numel() - 1))] = math.nan if how == "nan" else -math.inf
        tensor = flat.reshape(tensor.shape)
    elif how == "empty":
        tensor = tensor[:0]
    elif how == "shorter" and tensor.ndim:
        tensor = tensor[: max(tensor.shape[0] - 1, 0)]
    elif how == "flat":
        tensor = tensor.reshape(-1)
    elif how == "cast":
        tensor = tensor.to(data.draw(st.sampled_from([torch.int32, torch.float64, torch.uint8, torch.bool])))
    trace = holds(load_trace, rewritten(trace_file, tmp_path_factory.mktemp("tensors") / "bad.safetensors",
                                        tensors={key: tensor}))
    if trace is not None:
        holds(trace_frames, trace, "fast")
