"""Finding models without the network: $DIFFX_MODEL, data/, the Hugging Face hub cache, the embedded model."""

from __future__ import annotations

import json

import pytest

from diffx.errors import ModelNotFoundError
from diffx.models.configs import tiny
from diffx.models.stable_diffusion import build
from diffx.weights import discovery
from diffx.weights.discovery import SkippedModelWarning, find_models, resolve_model_source
from diffx.weights.load import save_model


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Point data/, the embedded model and every Hugging Face cache location into tmp_path."""
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setattr(discovery, "DATA_DIR", data)
    monkeypatch.setattr(discovery, "EMBEDDED_MODEL_DIR", data / "shapes-world")
    monkeypatch.setitem(discovery.MODEL_ALIASES, "embedded", data / "shapes-world")
    monkeypatch.setattr(discovery, "FLOW_MODEL_DIR", data / "shapes-world-flow")
    monkeypatch.setitem(discovery.MODEL_ALIASES, "shapes-world-flow", data / "shapes-world-flow")
    for name in ("DIFFX_MODEL", "HF_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return data


def test_discovery_order(tmp_path, isolated, monkeypatch):
    with pytest.raises(ModelNotFoundError, match="no model found: diffx looked in .*DIFFX_MODEL"):
        resolve_model_source()

    embedded = save_model(build(tiny()), isolated / "shapes-world")
    snapshot = tmp_path / "hub" / "models--runwayml--stable-diffusion-v1-5" / "snapshots" / "abc123"
    (snapshot / "unet").mkdir(parents=True)
    (snapshot / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    (snapshot / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    not_sd = tmp_path / "hub" / "models--someone--bert" / "snapshots" / "def456"
    not_sd.mkdir(parents=True)
    (not_sd / "config.json").write_text("{}")
    for name in ("other-model.safetensors", "v1-5-pruned-emaonly.ckpt", "README.txt"):
        (isolated / name).write_bytes(b"")
    explicit = tmp_path / "mine.ckpt"
    explicit.write_bytes(b"")

    assert [s.path for s in find_models()] == [
        isolated / "v1-5-pruned-emaonly.ckpt", isolated / "other-model.safetensors", snapshot, embedded]
    assert resolve_model_source().path == isolated / "v1-5-pruned-emaonly.ckpt"
    assert resolve_model_source("embedded").format == "diffx"
    assert resolve_model_source(str(snapshot)).format == "diffusers"

    monkeypatch.setenv("DIFFX_MODEL", str(explicit))
    assert find_models()[0].path == explicit
    assert resolve_model_source().path == explicit
    assert resolve_model_source(str(embedded)).path == embedded  # --model beats DIFFX_MODEL
    monkeypatch.setenv("DIFFX_MODEL", str(tmp_path / "gone.ckpt"))
    with pytest.raises(ModelNotFoundError, match="DIFFX_MODEL .*gone.ckpt: no such file"):
        resolve_model_source()


def test_the_two_shipped_models_come_last_and_the_u_net_one_is_the_default(isolated):
    flow = save_model(build(tiny()), isolated / "shapes-world-flow")  # discovery reads no family: any folder does
    embedded = save_model(build(tiny()), isolated / "shapes-world")
    assert [s.path for s in find_models()] == [embedded, flow]  # not a user's model of data/, first
    assert resolve_model_source().path == embedded
    assert resolve_model_source("shapes-world-flow").path == flow
    users = save_model(build(tiny()), isolated / "my-model")
    assert [s.path for s in find_models()] == [users, embedded, flow]


def test_a_damaged_cache_entry_is_skipped_with_a_warning(tmp_path, monkeypatch):
    """One stray model_index.json in the Hugging Face cache must not break every command run without --model."""
    snapshot = tmp_path / "hub" / "models--someone--thing" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text("[1, 2]")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.warns(SkippedModelWarning, match="skipped .*model_index.json"):
        found = find_models()
    assert snapshot not in [source.path for source in found]
