"""`TrainConfig` checks itself: every field's range (the same `diffx train` parses its options against), the
world's settings, and `for_world`, which builds the scheduler and caption settings the CLI asks for. A Python
caller meets the same one-line refusals as the CLI, naming the field instead of the option."""

import math

import pytest
from typer.testing import CliRunner

from diffx.cli import app
from diffx.embedded.captions import EXACT_CAPTIONS
from diffx.embedded.config import MAX_STEPS, NUMBERS, TrainConfig
from diffx.errors import InvalidArgumentError
from diffx.models.configs import ModelConfig
from tests.embedded.test_train_inputs import BAD_NUMBERS, NUMERIC

NOT_FINITE = [math.nan, math.inf, -math.inf]
FLOAT_FIELDS = {  # field: values training cannot use, besides NaN and ±inf
    "vae_lr": [0.0, -1e-3], "unet_lr": [0.0, -1.0], "vae_kl_weight": [-0.1], "shape_pixel_weight": [0.0, -2.0],
    "caption_dropout": [-0.1, 1.5], "attention_loss": [-1.0], "ema_decay": [-0.5, 1.0, 2.0],
}
INT_FIELDS = {  # field: values training cannot use
    "seed": [-1], "pool_size": [0, -5], "vae_steps": [0, -1], "vae_batch": [0], "vae_crop": [0, 33, 128],
    "unet_steps": [0], "unet_batch": [0, -64], "warmup_steps": [-1], "checkpoint_every": [0, -100],
    "threads": [-1],
}
BAD = ([(name, value) for name, values in FLOAT_FIELDS.items() for value in [*values, *NOT_FINITE]]
       + [(name, value) for name, values in INT_FIELDS.items() for value in [*values, 1.5, math.nan]]
       + [("out_dir", ""), ("device", ""), ("device", None), ("init_from", "")]
       + [("object_counts", bad) for bad in ([1, -1], [0, 0], [math.nan], [1, math.inf], "1,2", [True])])


@pytest.mark.parametrize(("name", "value"), BAD, ids=[f"{name}={value!r}" for name, value in BAD])
def test_train_config_rejects_values_training_cannot_use(name, value):
    with pytest.raises(InvalidArgumentError, match=rf"^{name} must be ") as caught:
        TrainConfig(**{name: value})
    assert "\n" not in str(caught.value)


def test_object_counts_past_the_worlds_most_objects_are_rejected():
    with pytest.raises(InvalidArgumentError, match="more than 2 objects, the most the 'shapes' world draws"):
        TrainConfig(object_counts=[0.5, 0.5, 0.1])
    assert TrainConfig(object_counts=[0.2, 0.8, 0.0]).object_counts == [0.2, 0.8, 0.0]


@pytest.mark.parametrize("good", [{}, {"attention_loss": 0.0}, {"caption_dropout": 1.0}, {"ema_decay": 0.0},
                                  {"warmup_steps": 0}, {"threads": 4}, {"vae_crop": 64}, {"unet_lr": 1},
                                  {"init_from": "data/shapes-world-2"}, {"device": "cpu"}])
def test_train_config_accepts_the_edges_of_each_range(good):
    assert TrainConfig(**good)


OPTION_FIELDS = {"--vae-steps": "vae_steps", "--unet-steps": "unet_steps", "--batch": "unet_batch",
                 "--lr": "unet_lr", "--pool-size": "pool_size", "--seed": "seed",
                 "--attention-loss": "attention_loss", "--checkpoint-every": "checkpoint_every",
                 "--vae-batch": "vae_batch", "--vae-crop": "vae_crop"}
# The CLI table's bad values (tests/embedded/test_train_inputs.py) as a Python caller would pass them.
PYTHON_BAD = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "negative": -1, "huge": 1e300,
              "huge-int": 10**30, "non-numeric": "abc", "empty": ""}
API_CASES = [(option, kind, value) for option in OPTION_FIELDS for kind, value in PYTHON_BAD.items()] + [
    (option, "zero", 0) for option, zero_fails in NUMERIC.items() if zero_fails]


def test_the_python_table_covers_the_clis():
    assert set(OPTION_FIELDS) == set(NUMERIC) and set(PYTHON_BAD) == set(BAD_NUMBERS)
    assert set(OPTION_FIELDS.values()) <= set(NUMBERS)


@pytest.mark.parametrize(("option", "kind", "value"), API_CASES, ids=[f"{o} {k}" for o, k, _ in API_CASES])
def test_the_python_api_refuses_what_the_cli_refuses(option, kind, value):
    name = OPTION_FIELDS[option]
    with pytest.raises(InvalidArgumentError, match=rf"^{name} must be ") as caught:
        TrainConfig(**{name: value})
    assert "\n" not in str(caught.value) and f"e.g. {name}=" in str(caught.value)


@pytest.mark.parametrize("option", list(OPTION_FIELDS))
def test_the_cli_and_the_python_api_give_the_same_range(tmp_path, option):
    name = OPTION_FIELDS[option]
    with pytest.raises(InvalidArgumentError) as caught:
        TrainConfig(**{name: -1})
    result = CliRunner().invoke(app, ["train", "--out-dir", str(tmp_path / "run"), option, "-1"])
    cli = result.stderr.strip().removeprefix("error: ")
    assert result.exit_code == 2 and cli.startswith(f"{option} must be ")
    assert _range(cli, option) == _range(str(caught.value), name) == str(NUMBERS[name])


def _range(message: str, label: str) -> str:
    """"<label> must be <range>, got ..." -> "<range>"."""
    return message.removeprefix(f"{label} must be ").split(", got ")[0]


def test_the_upper_limits_hold_for_the_python_api_too():
    for name, value in [("vae_steps", MAX_STEPS + 1), ("unet_lr", 1.5), ("attention_loss", 1001.0),
                        ("seed", 2**63 - 1), ("threads", 4097), ("pool_size", 1_000_001), ("unet_batch", 65537)]:
        with pytest.raises(InvalidArgumentError, match=rf"^{name} must be .* at most"):
            TrainConfig(**{name: value})
    assert TrainConfig(vae_steps=MAX_STEPS, seed=2**63 - 2, threads=4096).vae_steps == MAX_STEPS


def test_ranges_read_as_words():
    assert str(NUMBERS["unet_batch"]) == "a whole number at least 1 and at most 65536"
    assert str(NUMBERS["unet_lr"]) == "a finite number above 0 and at most 1"
    assert str(NUMBERS["ema_decay"]) == "a finite number at least 0 and below 1"
    assert str(NUMBERS["vae_kl_weight"]) == "a finite number at least 0"
    assert 10**400 not in NUMBERS["unet_lr"] and 10**400 in NUMBERS["vae_kl_weight"]  # no float overflow


def test_for_world_builds_the_scheduler_and_captions_the_cli_asks_for():
    config = TrainConfig.for_world("shapes2", "v_prediction", zero_snr=True, exact_captions=True, pool_size=8)
    scheduler = ModelConfig.from_dict(config.model).scheduler
    assert (scheduler.prediction_type, scheduler.rescale_betas_zero_snr, scheduler.timestep_spacing) == (
        "v_prediction", True, "trailing")
    assert config.caption_noise == EXACT_CAPTIONS.to_dict() and config.pool_size == 8
    assert TrainConfig.for_world() == TrainConfig()  # the defaults: v1, ε, as the world's model has it


@pytest.mark.parametrize(("arguments", "message"), [
    ({"world": "planets"}, "^unknown world 'planets'"),
    ({"exact_captions": True}, "^--exact-captions: the 'shapes' world's captions are exact already"),
    ({"prediction_type": "x0"}, "^prediction type 'x0' is not one of: epsilon, v_prediction"),
    ({"unet_lr": 0}, "^unet_lr must be a finite number above 0"),
])
def test_for_world_refuses_what_the_cli_refuses(arguments, message):
    with pytest.raises(InvalidArgumentError, match=message):
        TrainConfig.for_world(**arguments)
