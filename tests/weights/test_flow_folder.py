"""An SD3-family diffx folder (the embedded flow model's format): config.json marked "family": "sd3" and checked
against `SD3Config`, model.safetensors under SD3's single-file keys; `save_model` and `load_model` round trip."""

import json

import pytest
import torch
from safetensors import safe_open

from diffx.embedded.flow_model import flow_model_config
from diffx.errors import CheckpointError, InvalidArgumentError
from diffx.models.any_model import build_model
from diffx.models.configs import shapes_world
from diffx.models.sd3 import StableDiffusion3
from diffx.weights.discovery import resolve_model_source
from diffx.weights.load import describe_architecture, load_model, save_model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = build_model(flow_model_config(shapes_world(), depth=1, heads=2, head_dim=16))
    folder = save_model(model, tmp_path_factory.mktemp("flow") / "model", dtype=torch.float32)
    return model, folder


def test_the_folder_names_its_family_and_holds_single_file_keys(saved):
    model, folder = saved
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    assert config["family"] == "sd3" and config["clip_g"] is None and config["t5"] is None
    with safe_open(folder / "model.safetensors", framework="pt") as f:
        keys = set(f.keys())
    assert "model.diffusion_model.context_embedder.weight" in keys and "first_stage_model.encoder.conv_in.weight" \
        in keys and any(k.startswith("text_encoders.clip_l.transformer.text_model.") for k in keys)
    assert keys == set(model.original_state_dict())


def test_load_model_reads_it_back_unchanged(saved):
    model, folder = saved
    loaded = load_model(folder)
    assert isinstance(loaded, StableDiffusion3) and loaded.config == model.config
    for key, tensor in model.original_state_dict().items():
        assert torch.equal(loaded.original_state_dict()[key], tensor), key


def test_a_damaged_config_is_one_error_naming_the_field(saved, tmp_path):
    _, folder = saved
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["mmdit"]["depth"] = "six"
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (damaged / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=r"config\.json\.mmdit\.depth is \"six\"; it must be int"):
        load_model(damaged)


def test_a_flow_model_refuses_another_prediction_type(saved):
    with pytest.raises(InvalidArgumentError, match="predicts a flow velocity"):
        load_model(saved[1], prediction_type="epsilon")


def test_diffx_models_describes_it(saved):
    source = resolve_model_source(saved[1])
    assert describe_architecture(source) == "SD3 family (shapes-world-flow), rectified flow"
