"""Loading weights: original checkpoints (.ckpt / .safetensors), diffusers folders, diffx folders.

The witnesses are independent: diffusers' own LDM->diffusers converters and `save_pretrained` produce the
diffusers folders, `torch.save` produces the .ckpt files, and a subprocess without Lightning loads them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffx.errors import CheckpointError, InvalidArgumentError, ModelNotFoundError
from diffx.models.configs import ModelConfig, sd15, tiny
from diffx.models.stable_diffusion import StableDiffusion, build
from diffx.weights import load as weights
from diffx.weights.discovery import resolve_model_source
from diffx.weights.load import load_model, read_state_dict, save_model
from diffx.weights.safe_pickle import load_torch_zip
from tests.models.tokenizer_files import write_vocab_folder

REPO = Path(__file__).resolve().parents[2]
UNET_KEY = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"


@pytest.fixture(scope="module")
def original() -> dict[str, torch.Tensor]:
    """A random tiny model's weights in the original single-file layout."""
    torch.manual_seed(0)
    return {key: tensor.detach().clone() for key, tensor in build(tiny()).original_state_dict().items()}


def assert_same_weights(model: StableDiffusion, expected: dict[str, torch.Tensor]) -> None:
    loaded = model.original_state_dict()
    assert loaded.keys() == expected.keys()
    for key, tensor in expected.items():
        assert loaded[key].dtype == tensor.dtype, key
        assert torch.equal(loaded[key], tensor), key


def save_safetensors(state_dict: dict[str, torch.Tensor], path: Path) -> Path:
    save_file({key: tensor.contiguous() for key, tensor in state_dict.items()}, path)
    return path


def fake_lightning_callback() -> tuple[types.ModuleType, list[str], object]:
    """An instance of `pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint` from a made-up module."""
    names = ["pytorch_lightning", "pytorch_lightning.callbacks",
             "pytorch_lightning.callbacks.model_checkpoint"]
    module = types.ModuleType(names[-1])

    class ModelCheckpoint:
        def __init__(self) -> None:
            self.monitor, self.best_model_score = "val/loss", torch.tensor(0.25)

    ModelCheckpoint.__module__, ModelCheckpoint.__qualname__ = module.__name__, "ModelCheckpoint"
    module.ModelCheckpoint = ModelCheckpoint
    return module, names, ModelCheckpoint()


def save_lightning_checkpoint(state_dict: dict[str, torch.Tensor], path: Path, monkeypatch) -> Path:
    """torch.save of a Lightning-style checkpoint whose callbacks need `pytorch_lightning` to unpickle."""
    module, names, callback = fake_lightning_callback()
    for name in names:  # pickle looks the class up by its module name while saving
        monkeypatch.setitem(sys.modules, name, module if name == names[-1] else types.ModuleType(name))
    torch.save({"state_dict": state_dict, "global_step": 1, "callbacks": {callback: {"best_k": 1}}}, path)
    return path


# ---------------------------------------------------------------------------------------------------
# Original single-file checkpoints


def test_ckpt_and_safetensors_load_where_lightning_is_not_installed(tmp_path, original, monkeypatch):
    ckpt = save_lightning_checkpoint(original, tmp_path / "model.ckpt", monkeypatch)
    safetensors = save_safetensors(original, tmp_path / "model.safetensors")
    with pytest.raises(Exception, match="weights_only|Unsupported global"):
        torch.load(ckpt, weights_only=True)  # what diffx must cope with

    # A fresh interpreter: the fake module is gone, so unpickling the callback needs a placeholder.
    child = (
        "import importlib.util, sys, torch\n"
        "from diffx.weights.load import load_model, save_model\n"
        "assert importlib.util.find_spec('pytorch_lightning') is None\n"
        "for path in sys.argv[1:]:\n"
        "    model = load_model(path)\n"
        "    print(model.config.name)\n"
        "    save_model(model, path + '.out', dtype=torch.float32)\n"
    )
    result = subprocess.run([sys.executable, "-c", child, str(ckpt), str(safetensors)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["tiny", "tiny"]  # the preset was recognised from the shapes
    for path in (ckpt, safetensors):
        reloaded = load_file(f"{path}.out/model.safetensors")
        assert reloaded.keys() == original.keys()
        assert all(torch.equal(reloaded[key], original[key]) for key in original)


def test_lightning_objects_become_inert_placeholders(tmp_path, original, monkeypatch):
    ckpt = save_lightning_checkpoint(original, tmp_path / "model.ckpt", monkeypatch)
    for name in [n for n in sys.modules if n.startswith("pytorch_lightning")]:
        monkeypatch.delitem(sys.modules, name)
    tree = load_torch_zip(ckpt)
    (callback, state), = tree["callbacks"].items()
    assert type(callback).pickled_name == "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"
    assert state == {"best_k": 1} and tree["global_step"] == 1
    assert torch.equal(callback.state["best_model_score"], torch.tensor(0.25))


def test_fp16_checkpoint_is_cast_to_the_requested_dtype(tmp_path, original):
    half = {key: tensor.half() for key, tensor in original.items()}
    path = save_safetensors(half, tmp_path / "half.safetensors")
    assert_same_weights(load_model(path), {key: tensor.float() for key, tensor in half.items()})
    assert_same_weights(load_model(path, dtype=torch.float16), half)


def test_ema_weights_are_used_when_present_unless_main_is_asked(tmp_path, original, monkeypatch):
    ema = {key: tensor + 1 for key, tensor in original.items() if key.startswith("model.diffusion_model.")}
    checkpoint = {
        **original,
        # The EMA copy is stored under the key with its dots removed, as in the LDM training code.
        **{"model_ema." + key.removeprefix("model.").replace(".", ""): tensor for key, tensor in ema.items()},
        "model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(1000),
        "betas": torch.linspace(1e-4, 2e-2, 1000), "alphas_cumprod": torch.ones(1000),
        "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(77)[None],
    }
    assert "model_ema.diffusion_modelinput_blocks10in_layers2weight" in checkpoint
    path = save_lightning_checkpoint(checkpoint, tmp_path / "ema.ckpt", monkeypatch)
    notes = []
    assert_same_weights(load_model(path, note=notes.append), {**original, **ema})
    assert_same_weights(load_model(path, weights="main", note=notes.append), original)
    assert "the U-Net's EMA weights (the file also has the main ones" in notes[0]
    assert "the main U-Net weights (--weights main; the file also has EMA ones)" in notes[1]
    plain = save_safetensors(original, tmp_path / "plain.safetensors")
    assert_same_weights(load_model(plain, weights="ema", note=notes.append), original)
    assert "(the file has no EMA copy)" in notes[2]
    with pytest.raises(InvalidArgumentError, match="unknown weights 'both'; choose one of: ema, main"):
        load_model(plain, weights="both")


def test_older_clip_key_layout_without_text_model_loads(tmp_path, original):
    """Files from before transformers 4.20 name CLIP's tensors `cond_stage_model.transformer.encoder…`."""
    prefix = "cond_stage_model.transformer."
    older = {prefix + key.removeprefix(prefix + "text_model.") if key.startswith(prefix) else key: tensor
             for key, tensor in original.items()}
    assert prefix + "embeddings.token_embedding.weight" in older
    assert_same_weights(load_model(save_safetensors(older, tmp_path / "older.safetensors")), original)


def test_malicious_pickle_is_refused_and_never_runs(tmp_path, original):
    marker = tmp_path / "MARKER"

    class RunsCommand:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    class RunsPython:
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w').close()",)

    for payload, culprit in ((RunsCommand(), "system"), (RunsPython(), "builtins.exec")):
        path = tmp_path / "evil.ckpt"
        torch.save({"state_dict": dict(original), "payload": payload}, path)
        with pytest.raises(CheckpointError, match=rf"refusing to load .*{culprit}.*malicious"):
            load_model(path)
        assert not marker.exists()


def test_tensor_reaching_past_its_data_is_refused(tmp_path):
    """A hand-edited pickle claims 99 elements over 3 stored ones (`set_` alone would read past them)."""
    path = tmp_path / "small.ckpt"
    torch.save({"weight": torch.arange(3.0)}, path)
    with zipfile.ZipFile(path) as archive:
        entries = {info.filename: archive.read(info) for info in archive.infolist()}
    pickle_name = next(name for name in entries if name.endswith("data.pkl"))
    assert entries[pickle_name].count(b"K\x03\x85") == 1  # BININT1 3, TUPLE1: the size (3,)
    entries[pickle_name] = entries[pickle_name].replace(b"K\x03\x85", b"Kc\x85")  # size (99,)
    edited = tmp_path / "edited.ckpt"
    with zipfile.ZipFile(edited, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    assert torch.equal(read_state_dict(path)["weight"], torch.arange(3.0))
    with pytest.raises(CheckpointError, match="reaches past the end of its stored data"):
        read_state_dict(edited)


# ---------------------------------------------------------------------------------------------------
# diffusers folders


def write_diffusers_folder(folder: Path, config: ModelConfig, original: dict[str, torch.Tensor],
                           weights_format: str) -> None:
    """A diffusers SD folder made by diffusers/transformers themselves from our original-layout weights."""
    import transformers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    from tests.models.ldm_configs import diffusers_unet_config, diffusers_vae_config

    # diffusers' helper guesses a 512-pixel model; say what tiny's latent size really is.
    unet_config = {**diffusers_unet_config(config, original),
                   "sample_size": config.image_size // config.vae.downsample_factor}
    vae_config = diffusers_vae_config(config, original)
    unet = UNet2DConditionModel(**unet_config)
    unet.load_state_dict(convert_ldm_unet_checkpoint(original, unet_config), strict=True)
    vae = AutoencoderKL(**vae_config)
    vae.load_state_dict(convert_ldm_vae_checkpoint(original, vae_config), strict=True)
    text = config.text_encoder
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=text.vocab_size, max_position_embeddings=text.max_position_embeddings,
        hidden_size=text.hidden_size, intermediate_size=text.intermediate_size,
        num_hidden_layers=text.num_hidden_layers, num_attention_heads=text.num_attention_heads,
        layer_norm_eps=text.layer_norm_eps, hidden_act=text.hidden_act,
    ))
    # transformers 5 names the keys without the `text_model.` of older versions and of the hub's SD folders.
    prefix = "cond_stage_model.transformer." + ("text_model." if "embeddings.position_embedding.weight"
                                                in text_encoder.state_dict() else "")
    text_encoder.load_state_dict(
        {key.removeprefix(prefix): tensor for key, tensor in original.items() if key.startswith(prefix)}
    )
    for name, module in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
        module.save_pretrained(folder / name)
        if weights_format == "bin":  # the older pickle format, as in many hub snapshots
            for safetensors_file in (folder / name).glob("*.safetensors"):
                bin_name = {"model.safetensors": "pytorch_model.bin"}.get(
                    safetensors_file.name, safetensors_file.name.replace(".safetensors", ".bin"))
                torch.save(load_file(safetensors_file), folder / name / bin_name)
                safetensors_file.unlink()
    write_vocab_folder(folder / "tokenizer")
    (folder / "scheduler").mkdir()
    scheduler = {"_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.013,
                 "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "steps_offset": 1}
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))


@pytest.mark.parametrize("weights_format", ["safetensors", "bin"])
def test_diffusers_folder_round_trip(tmp_path, original, weights_format):
    folder = tmp_path / "sd-tiny"
    write_diffusers_folder(folder, tiny(), original, weights_format)
    assert any((folder / "unet").glob(f"*.{weights_format}"))

    model = load_model(folder)
    assert_same_weights(model, original)
    expected = tiny()
    assert (model.config.unet, model.config.vae, model.config.text_encoder) == (
        expected.unet, expected.vae, expected.text_encoder)
    assert model.config.scheduler.beta_end == 0.013 and model.config.image_size == expected.image_size
    assert model.tokenizer("a cat").tolist() == build(tiny()).tokenizer("a cat").tolist()


def test_prediction_type_is_read_from_every_layout(tmp_path, original):
    """A v-prediction model loads as one (its diffusers scheduler config or diffx config says so); a type
    diffx does not run is one CheckpointError line."""
    diffusers_folder = tmp_path / "sd-tiny-v"
    write_diffusers_folder(diffusers_folder, tiny(), original, "safetensors")
    scheduler_file = diffusers_folder / "scheduler" / "scheduler_config.json"
    scheduler_file.write_text(json.dumps({**json.loads(scheduler_file.read_text()),
                                          "prediction_type": "v_prediction", "rescale_betas_zero_snr": True}))
    loaded = load_model(diffusers_folder).config.scheduler
    assert (loaded.prediction_type, loaded.rescale_betas_zero_snr) == ("v_prediction", True)
    model = build(tiny())
    model.load_original_state_dict(dict(original))
    diffx_folder = save_model(model, tmp_path / "diffx-v")
    config = json.loads((diffx_folder / "config.json").read_text())
    config["scheduler"]["prediction_type"] = "sample"
    (diffx_folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="predicts 'sample'; diffx runs epsilon and v_prediction models"
                       ) as error:
        load_model(diffx_folder)
    assert "\n" not in str(error.value)


def test_prediction_type_given_overrides_every_layout(tmp_path, original):
    """`prediction_type`, in any case, is what the loaded model's scheduler config says, whatever a single file's
    recognition, a given `config` (left unchanged), a diffusers scheduler config or a diffx config.json say; the
    note says it was given. Anything else is one line naming the choices, before the model is looked for."""
    model = build(tiny())
    model.load_original_state_dict(dict(original))
    write_diffusers_folder(tmp_path / "diffusers", tiny(), original, "safetensors")
    single = save_safetensors(original, tmp_path / "tiny.safetensors")
    given, notes = tiny(), []
    for source, config in ((single, None), (single, given), (tmp_path / "diffusers", None),
                           (save_model(model, tmp_path / "diffx", dtype=torch.float32), None)):
        loaded = load_model(source, config=config, prediction_type="V_Prediction", note=notes.append)
        assert loaded.config.scheduler.prediction_type == "v_prediction", source
        assert_same_weights(loaded, original)
    assert given.scheduler.prediction_type == "epsilon"
    assert len(notes) == 2 and all(note.endswith("; predicts v_prediction (as given)") for note in notes), notes
    with pytest.raises(InvalidArgumentError, match=r"^unknown prediction type 'x0'; choose one of: epsilon, "
                                                   r"v_prediction$"):
        load_model(tmp_path / "no-such-model", prediction_type="X0")


def test_rename_rules_invert_diffusers_converters_at_sd15_size():
    """Meta tensors: every diffusers name maps back to the very tensor object it came from."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    from tests.models.ldm_configs import diffusers_unet_config, diffusers_vae_config

    config = sd15()
    with torch.device("meta"):
        original = build(config).original_state_dict()
    unet_diffusers = convert_ldm_unet_checkpoint(original, diffusers_unet_config(config, original))
    vae_diffusers = convert_ldm_vae_checkpoint(original, diffusers_vae_config(config, original))
    back = {**weights.unet_from_diffusers(unet_diffusers, config.unet),
            **weights.vae_from_diffusers(vae_diffusers, config.vae)}
    assert back.keys() == {key for key in original if not key.startswith("cond_stage_model.")}
    assert all(back[key].shape == original[key].shape for key in back)
    # Only the VAE's attention 1x1 convs were reshaped on the way (to Linear and back): new tensor objects.
    reshaped = sorted(key for key in back if back[key] is not original[key])
    assert reshaped == sorted(f"first_stage_model.{part}.mid.attn_1.{name}.weight"
                              for part in ("encoder", "decoder") for name in ("q", "k", "v", "proj_out"))


# ---------------------------------------------------------------------------------------------------
# diffx folders and errors


def test_save_model_writes_a_diffx_folder_that_loads_back(tmp_path, original):
    model = build(tiny())
    model.load_original_state_dict(dict(original))
    folder = save_model(model, tmp_path / "saved")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_model(folder, dtype=torch.float16)
    assert loaded.config == tiny()
    assert_same_weights(loaded, {key: tensor.half() for key, tensor in original.items()})
    assert resolve_model_source(folder).format == "diffx"


def test_missing_and_misshaped_keys_are_listed(tmp_path, original):
    broken = dict(original)
    del broken[UNET_KEY]
    broken["first_stage_model.quant_conv.bias"] = torch.zeros(3)
    path = save_safetensors(broken, tmp_path / "broken.safetensors")
    with pytest.raises(CheckpointError) as error:
        load_model(path, config=tiny())
    message = str(error.value)
    assert f"1 missing ({UNET_KEY})" in message
    assert "1 mis-shaped (first_stage_model.quant_conv.bias (3,) != (8,))" in message
    assert "\n" not in message


@pytest.mark.parametrize("keys, message", [
    (["encoder.conv_in.weight", "decoder.conv_out.weight"], "is a standalone VAE, not a whole model"),
    (["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"], "is a LoRA adapter, not a whole model"),
    (["bert.embeddings.weight"], "is not a Stable Diffusion checkpoint"),
])
def test_files_that_are_not_whole_models_are_named(tmp_path, keys, message):
    path = save_safetensors({key: torch.zeros(2) for key in keys}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match=f"other.safetensors: this file {message}"):
        load_model(path)


def test_files_that_are_not_checkpoints(tmp_path):
    text_file = tmp_path / "notes.ckpt"
    text_file.write_text("not weights")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        read_state_dict(text_file)
    legacy = tmp_path / "legacy.pt"
    torch.save({"weight": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="legacy .*re-save it .* or convert it to .safetensors"):
        read_state_dict(legacy)
    bad_safetensors = tmp_path / "bad.safetensors"
    bad_safetensors.write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="not a valid .safetensors"):
        read_state_dict(bad_safetensors)
    with pytest.raises(CheckpointError, match="not a model folder"):
        load_model(tmp_path)
    with pytest.raises(ModelNotFoundError, match="no such file or folder"):
        load_model(tmp_path / "missing.ckpt")


# ---------------------------------------------------------------------------------------------------
# Full size


@pytest.mark.slow
def test_sd15_size_ckpt_loads_without_copies(tmp_path):
    """A 2 GB fp16 Lightning-style .ckpt at SD1.5 size: config inferred, tensors identical, mmap-backed."""
    with torch.device("meta"):
        shapes = {key: t.shape for key, t in build(sd15()).original_state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    original = {key: torch.randn(shape, generator=generator, dtype=torch.float16)
                for key, shape in shapes.items()}
    path = tmp_path / "v1-5-pruned-emaonly.ckpt"
    torch.save({"state_dict": original, "global_step": 840000}, path)

    start = time.perf_counter()
    model = load_model(path, dtype=torch.float16)
    seconds = time.perf_counter() - start
    assert model.config == sd15() and model.num_parameters() == 1_066_235_307
    assert_same_weights(model, original)
    assert seconds < 30, f"loading took {seconds:.1f} s"


def test_building_for_a_checkpoint_skips_random_init_and_restores_it_after():
    """Inside the meta-building block parameters are shape-only and nn.init is not run; after it, both are back."""
    from torch import nn

    from diffx.models.stable_diffusion import parameters_on_meta

    normal = nn.init.normal_
    with parameters_on_meta():
        layer = nn.Linear(3, 2)
        assert layer.weight.is_meta and nn.init.normal_ is not normal
        assert nn.init.normal_(torch.zeros(2)).eq(0).all()  # a no-op while building
    assert nn.init.normal_ is normal and not nn.Linear(3, 2).weight.is_meta
    assert nn.init.normal_(torch.zeros(1000)).std() > 0.5


@pytest.mark.parametrize("damage, message", [
    ({"image_size": "512"}, r"config.json.image_size is \"512\"; it must be int"),
    ({"unet": {"channel_mult": [1, "2"]}}, r"config.json.unet.channel_mult is \[1, \"2\"\]"),
    ({"extra": 1}, "fields diffx does not know: 'extra'"),
])
def test_a_damaged_folder_config_is_one_line(tmp_path, original, damage, message):
    folder = save_model(build(tiny()), tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    for key, value in damage.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        load_model(folder)
    for whole in ({}, [1, 2]):
        (folder / "config.json").write_text(json.dumps(whole))
        with pytest.raises(CheckpointError, match="lacks 'name'|is list, not an object"):
            load_model(folder)


@pytest.mark.parametrize("spoil, message", [
    (lambda t: t.fill_(float("nan")), "holds NaN or infinite values"),
    (lambda t: t.to(torch.int32), "is int32; a weight must be floating point"),
])
def test_damaged_weights_are_refused_by_name(tmp_path, spoil, message):
    folder = save_model(build(tiny()), tmp_path / "model")
    tensors = load_file(folder / "model.safetensors")
    key = next(k for k in tensors if k.endswith("out.2.weight"))
    tensors[key] = spoil(tensors[key].clone())
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=f"tensor {key} {message}".replace(".", r"\.")):
        load_model(folder)
