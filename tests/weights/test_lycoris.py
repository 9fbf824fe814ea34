"""LyCORIS's LoHa and LoKr (diffx.weights.lycoris, diffx.weights.lora_layers): against PEFT's own LoHa and LoKr
layers injected into diffusers' U-Net and transformers' CLIP, on random weights at SD1.5's real widths (reduced
depth, as tests/weights/test_lora_apply.py: one ResBlock per level, 2 CLIP blocks) — PEFT draws the factors, the
test writes them under LyCORIS's kohya names, diffx reads the file — on ε̂ and the text encoder's output at scales
1 and 0.5, one file holding both: LoHa on attention and (with Tucker cores) the ResBlocks' first 3x3 convolutions,
LoKr with a low-rank W2 on the feed-forward, proj_in/out, CLIP's MLP and (flattened) the second convolutions. On
the tiny model: the forms PEFT does not write (LoHa without Tucker on a convolution, a LoHa larger as a pair than
ΔW, LoKr with a Tucker core, LoKr with both factors full: factor 1) against the weights with ΔW merged, ΔW built
here by the formulas LyCORIS documents; each kind's norm; and bad files refused in one line."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from diffusers.utils.peft_utils import delete_adapter_layers
from peft import LoHaConfig, LoKrConfig, inject_adapter_in_model
from peft.tuners.lycoris_utils import LycorisLayer
from torch import nn

from diffx.errors import CheckpointError
from diffx.models.stable_diffusion import StableDiffusion
from diffx.weights.lora import lora_summary, read_lora
from diffx.weights.lora_apply import apply_lora
from diffx.weights.lora_inspect import inspect_lora
from diffx.weights.lora_layers import DenseLayer, KroneckerLayer, LoraLayer
from tests.weights.lora_files import ATTENTION_LEAVES, CONV_LEAVES, TOLERANCE, adapted_layers, write_lora
from tests.weights.test_lora_apply import sd15_outputs, sd15_pair  # noqa: F401 (the fixture)

FACTORS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
           "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
PREFIXES = {"unet": "lora_unet_", "text_encoder": "lora_te_"}


def kohya_name(component: str, path: str) -> str:
    """LyCORIS's (kohya's) name of a layer: the prefix and its diffusers / transformers path with _ for ."""
    if component == "text_encoder":  # transformers >= 5.6 drops `text_model.` from CLIPTextModel's paths
        path = "text_model." + path.removeprefix("text_model.")
    return PREFIXES[component] + path.replace(".", "_")


# Which layers get which adapter: LoHa on attention and the ResBlocks' first convolutions (Tucker cores), LoKr on
# the feed-forward, the transformers' proj_in / proj_out, the second convolutions (flattened W2) and CLIP's MLP.
PLAN = {
    "loha": (lambda targets: LoHaConfig(r=4, alpha=2.0, target_modules=targets, use_effective_conv2d=True,
                                        init_weights=False), 10.0,
             ("to_q", "to_k", "to_v", "to_out.0", "q_proj", "k_proj", "v_proj", "out_proj", "conv1")),
    "lokr": (lambda targets: LoKrConfig(r=4, alpha=8.0, target_modules=targets, use_effective_conv2d=False,
                                        init_weights=False), 3.0,
             ("ff.net.0.proj", "ff.net.2", "proj_in", "proj_out", "conv2", "fc1", "fc2")),
}


def inject(theirs: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """PEFT's LoHa and LoKr (`PLAN`: random factors, the first scaled by a gain so the update shows) injected into
    each reference module, and the same tensors under LyCORIS's names, as a LyCORIS trainer writes them."""
    tensors = {}
    for adapter, (make_config, gain, leaves) in PLAN.items():
        for component, reference in theirs.items():
            targets = list(adapted_layers(reference, leaves))
            assert targets and set(targets) <= set(adapted_layers(reference, ATTENTION_LEAVES + CONV_LEAVES))
            inject_adapter_in_model(make_config(targets), reference, adapter_name=adapter)
            for path, module in reference.named_modules():
                present = [f for f in FACTORS if adapter in getattr(module, f, {})]
                if not isinstance(module, LycorisLayer) or not present:
                    continue
                name = kohya_name(component, path.removesuffix(".base_layer"))
                with torch.no_grad():
                    getattr(module, present[0])[adapter].mul_(gain)
                tensors |= {f"{name}.{f}": getattr(module, f)[adapter].detach().clone() for f in present}
                tensors[f"{name}.alpha"] = torch.tensor(float(module.alpha[adapter]))
    return tensors


def test_loha_and_lokr_match_peft(sd15_pair, tmp_path):  # noqa: F811
    """Max |diffx − PEFT| per output at scales 1 and 0.5; the adapters taken off after, diffx's output back."""
    model, theirs = sd15_pair
    before = sd15_outputs(model, theirs)
    file = write_lora(tmp_path / "lycoris.safetensors", inject(theirs))
    kinds = {(layer.kind, type(layer)) for layer in read_lora(file, model).layers}
    # LoHa attention as rank-16 pairs, its Tucker convolutions whole; LoKr as Kronecker factors
    assert kinds == {("LoHa", LoraLayer), ("LoHa", DenseLayer), ("LoKr", KroneckerLayer)}
    applied = apply_lora(model, file)
    diffs = {}
    for scale in (1.0, 0.5):
        if scale != 1.0:
            applied.scale = scale
            for module in (m for reference in theirs.values() for m in reference.modules()):
                if isinstance(module, LycorisLayer):
                    module.scale_layer(scale)
        for name, (ours, reference) in sd15_outputs(model, theirs).items():
            assert (reference - before[name][1]).abs().max() > 100 * TOLERANCE, f"PEFT's {name} is unchanged"
            diffs[f"{name} @ {scale:g}"] = float((ours - reference).abs().max())
    applied.remove()
    for reference in theirs.values():
        for adapter in PLAN:
            delete_adapter_layers(reference, adapter)
        del reference.peft_config
    assert all(torch.equal(ours, before[name][0]) for name, (ours, _) in sd15_outputs(model, theirs).items())
    print("SD1.5 LoHa + LoKr vs PEFT:", {name: f"{d:.2e}" for name, d in diffs.items()})
    assert all(d <= TOLERANCE for d in diffs.values()), diffs


# The forms PEFT does not write, against ΔW built here and merged into the weights.

CONV = "input_blocks.1.0.in_layers.2"  # a 3x3 convolution, 32 -> 32 in the tiny model
LINEAR = "input_blocks.1.1.transformer_blocks.0.attn1.to_q"  # 32 -> 32
FF = "input_blocks.1.1.transformer_blocks.0.ff.net.2"  # 128 -> 32


def tucker(core: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ_ij core[i, j] a[i, p] b[j, q], written as loops of outer products (independent of lycoris._tucker's einsum)."""
    out = torch.zeros(a.shape[1], b.shape[1], *core.shape[2:])
    for i in range(core.shape[0]):
        for j in range(core.shape[1]):
            out += torch.outer(a[i], b[j])[:, :, None, None] * core[i, j]
    return out


def lycoris_files(model: StableDiffusion, tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """One file with a LoHa on a convolution (no Tucker), a LoHa larger as a pair than ΔW (rank 8 on 32 -> 32), a
    LoKr with a Tucker core on a convolution and a LoKr with both factors full; and ΔW · factor per layer."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.3

    conv, linear, ff = (model.unet.get_submodule(path) for path in (CONV, LINEAR, FF))
    tensors, deltas = {}, {}
    # LoHa, convolution without Tucker: w*_b (r, in·3·3)
    w1a, w1b, w2a, w2b = rand(32, 2), rand(2, 32 * 9), rand(32, 2), rand(2, 32 * 9)
    tensors |= {"lora_unet_input_blocks_1_0_in_layers_2." + k: v for k, v in dict(
        hada_w1_a=w1a, hada_w1_b=w1b, hada_w2_a=w2a, hada_w2_b=w2b, alpha=torch.tensor(1.0)).items()}
    deltas[CONV] = 0.5 * ((w1a @ w1b) * (w2a @ w2b)).reshape(conv.weight.shape)
    # LoHa, rank 8 on a 32 -> 32 layer: 64 · (32 + 32) > 32 · 32, held whole
    w1a, w1b, w2a, w2b = rand(32, 8), rand(8, 32), rand(32, 8), rand(8, 32)
    tensors |= {"lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q." + k: v for k, v in dict(
        hada_w1_a=w1a, hada_w1_b=w1b, hada_w2_a=w2a, hada_w2_b=w2b, alpha=torch.tensor(4.0)).items()}
    deltas[LINEAR] = 0.5 * (w1a @ w1b) * (w2a @ w2b)
    # LoKr with both factors full on the feed-forward's 128 -> 32: factor 1, alpha ignored
    w1, w2 = rand(4, 8), rand(8, 16)
    tensors |= {"lora_unet_input_blocks_1_1_transformer_blocks_0_ff_net_2." + k: v for k, v in dict(
        lokr_w1=w1, lokr_w2=w2, alpha=torch.tensor(100.0)).items()}
    deltas[FF] = torch.kron(w1, w2)
    assert deltas[FF].shape == ff.weight.shape and deltas[LINEAR].shape == linear.weight.shape
    return write_lora(tmp_path / "lycoris.safetensors", tensors), deltas


def test_loha_and_lokr_forms_equal_the_merged_weight(tiny_model, tmp_path):
    file, deltas = lycoris_files(tiny_model, tmp_path)
    g = torch.Generator().manual_seed(1)
    # LoKr with a Tucker core on a second convolution, in a second file (one update per layer and file)
    conv2 = "input_blocks.1.0.out_layers.3"
    w1, core, a, b = torch.randn(2, 4, generator=g) * 0.3, torch.randn(3, 3, 3, 3, generator=g) * 0.3, \
        torch.randn(3, 16, generator=g) * 0.3, torch.randn(3, 8, generator=g) * 0.3
    file2 = write_lora(tmp_path / "lokr-tucker.safetensors", {
        "lora_unet_input_blocks_1_0_out_layers_3." + k: v for k, v in dict(
            lokr_w1=w1, lokr_t2=core, lokr_w2_a=a, lokr_w2_b=b, alpha=torch.tensor(6.0)).items()})
    deltas[conv2] = 2.0 * torch.kron(w1[:, :, None, None], tucker(core, a, b))
    x, t = torch.randn(1, 4, 8, 8, generator=g), torch.tensor([500])
    context = torch.randn(1, 77, tiny_model.config.unet.context_dim, generator=g)
    merged = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for path, delta in deltas.items():
            merged.unet.get_submodule(path).weight += 0.7 * delta
    with torch.inference_mode():
        before, expected = tiny_model.unet(x, t, context), merged.unet(x, t, context)
    kinds = {type(layer) for f in (file, file2) for layer in read_lora(f, tiny_model).layers}
    assert kinds == {LoraLayer, DenseLayer, KroneckerLayer}
    handles = [apply_lora(tiny_model, f, scale=0.7) for f in (file, file2)]
    with torch.inference_mode():
        ours = tiny_model.unet(x, t, context)
    for handle in handles:
        handle.remove()
    assert (expected - before).abs().max() > 1e-2
    assert (ours - expected).abs().max() <= 1e-5, float((ours - expected).abs().max())


def test_each_kind_measures_and_merges_its_own_update(tiny_model, tmp_path):
    """norm() = ‖factor · ΔW‖_F and delta() = ΔW for all three kinds; the inspector reports the file's ranks."""
    file, deltas = lycoris_files(tiny_model, tmp_path)
    for layer in read_lora(file, tiny_model).layers:
        expected = deltas[layer.target.module_path]
        assert torch.allclose(layer.factor * layer.delta(), expected, atol=1e-5)
        assert layer.norm() == pytest.approx(float(expected.double().norm()), rel=1e-5)
    assert lora_summary(read_lora(file, tiny_model), tiny_model) == \
        "lycoris.safetensors: 3 LoHa + LoKr layers of the unet, 1 of them convolutions, ranks 2-8"
    report = inspect_lora(file, tiny_model)
    assert report.format == "LyCORIS LoHa (hada_w1_a, hada_w1_b, hada_w2_a, hada_w2_b, alpha) + LyCORIS LoKr " \
                            "(lokr_w1, lokr_w2 or their low-rank halves, alpha)"
    assert report.ranks == (0, 2, 8)  # LoHa ranks 2 and 8 (not their pairs' 4 and 64); the full LoKr has none


@pytest.mark.parametrize("tensors, message", [
    ({"hada_w1_a": (32, 2), "hada_w1_b": (2, 32), "hada_w2_a": (32, 2)}, "is a LoHa without hada_w2_b"),
    ({"hada_w1_a": (32, 2), "hada_w1_b": (2, 32), "hada_w2_a": (32, 2), "hada_w2_b": (2, 31)},
     r"its LoHa tensors \(.*\) do not fit a layer 32 -> 32"),
    ({"lokr_w1": (3, 4), "lokr_w2": (8, 8)}, "its LoKr tensors"),
    ({"lokr_w1_a": (4, 2), "lokr_w2": (8, 8)}, "is a LoKr without lokr_w1 or the pair lokr_w1_a, lokr_w1_b"),
    ({"lokr_w1": (4, 4), "lora_down.weight": (2, 32), "lora_up.weight": (32, 2)}, "mixes the keys of two kinds"),
    ({"hada_w1_a": (32, 2), "hada_w1_b": (2, 32), "hada_w2_a": (32, 2), "hada_w2_b": (2, 32), "hada_t1": (2, 2, 1, 1)},
     "with one Tucker core"),
])
def test_bad_lycoris_layers_are_refused_in_one_line(tiny_model, tmp_path, tensors, message):
    name = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q"
    file = write_lora(tmp_path / "bad.safetensors",
                      {f"{name}.{k}": torch.randn(*shape) for k, shape in tensors.items()})
    with pytest.raises(CheckpointError, match=message) as error:
        read_lora(file, tiny_model)
    assert "\n" not in str(error.value) and len(str(error.value)) <= 300


def test_dora_and_other_adapters_are_named_in_the_refusal(tiny_model, tmp_path):
    file = write_lora(tmp_path / "dora.safetensors", {
        "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q.dora_scale": torch.ones(1, 32)})
    with pytest.raises(CheckpointError, match="LoHa, LoKr are read; DoRA, OFT, IA3 are not"):
        read_lora(file, tiny_model)
