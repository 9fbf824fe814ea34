"""The CPU fast path (diffx/models/fast_cpu.py): bf16 + channels-last stays within its tolerances of fp32.

Random weights, small models; nothing here is timed (speed: benchmarks/unet_speed.py, vae_speed.py).
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from diffx.models import fast_cpu
from diffx.models.attention import observe_attention
from diffx.models.configs import shapes_world, tiny
from diffx.models.fast_cpu import _PACKED, FAST_DTYPE, PackedConv2d, onednn_bf16_kernels, to_fast_path
from diffx.models.stable_diffusion import build
from diffx.models.unet import UNet
from diffx.models.vae import AutoencoderKL, ResnetBlock
from diffx.weights.safetensors_map import map_safetensors

# The precision tests run on every CPU (bf16 on PyTorch's own kernels where oneDNN has none); the tests of the
# packed kernel itself need oneDNN's bf16 convolutions (x86: AVX512-BW/VL/DQ or AVX-NE-CONVERT).
needs_onednn_bf16 = pytest.mark.skipif(not onednn_bf16_kernels(), reason="oneDNN has no bf16 convolutions on this "
                                       "CPU: PackedConv2d runs nn.Conv2d's path (test_packed_falls_back_…)")

EPS_TOLERANCE = 0.015  # relative error of ε̂ vs fp32, the bound (#18)


def is_fast_path(module: nn.Module) -> bool:
    """Whether `module` runs the fast path: bf16 weights, its 4-D ones channels-last, its convolutions packed."""
    parameters = list(module.parameters())
    convolutions = [p for p in parameters if p.dim() == 4]
    return bool(parameters) and parameters[0].dtype == FAST_DTYPE and all(
        p.is_contiguous(memory_format=torch.channels_last) for p in convolutions) and all(
        isinstance(layer, PackedConv2d) for layer in module.modules() if isinstance(layer, nn.Conv2d))



def relative_error(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    return ((estimate.float() - reference).norm() / reference.norm()).item()


@pytest.fixture(scope="module")
def unets() -> tuple[UNet, UNet]:
    """The embedded model's U-Net architecture with random weights: fp32 and a fast-path copy."""
    torch.manual_seed(0)
    fp32 = UNet(shapes_world().unet).eval()
    return fp32, to_fast_path(copy.deepcopy(fp32))


def unet_inputs(batch: int = 2, size: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return (torch.randn(batch, 4, size, size, generator=generator), torch.tensor([999, 500][:batch]),
            torch.randn(batch, 77, 64, generator=generator))


def test_fast_path_eps_within_tolerance_of_fp32(unets):
    fp32, fast = unets
    assert is_fast_path(fast) and not is_fast_path(fp32)
    x, t, context = unet_inputs()
    with torch.inference_mode():
        reference, eps = fp32(x, t, context), fast(x, t, context)
    assert eps.dtype == FAST_DTYPE and eps.shape == reference.shape
    assert eps.is_contiguous(memory_format=torch.channels_last)  # the layout carried through the whole U-Net
    assert 0 < relative_error(eps, reference) <= EPS_TOLERANCE


def test_channels_last_changes_no_number_beyond_bf16_rounding(unets):
    """bf16 in NCHW and bf16 channels-last compute the same thing: they differ far less than bf16 from fp32."""
    fp32, fast = unets
    plain = copy.deepcopy(fp32).to(FAST_DTYPE)
    x, t, context = unet_inputs()
    with torch.inference_mode():
        reference, eps_plain, eps_fast = fp32(x, t, context), plain(x, t, context), fast(x, t, context)
    assert not eps_plain.is_contiguous(memory_format=torch.channels_last)
    assert relative_error(eps_fast, eps_plain.float()) <= relative_error(eps_plain, reference) + 0.005


def test_fast_vae_decode_close_to_fp32():
    torch.manual_seed(0)
    fp32 = AutoencoderKL(tiny().vae).eval()
    fast = to_fast_path(copy.deepcopy(fp32))
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        reference, picture = fp32.decode(z), fast.decode(z.to(FAST_DTYPE)).float()
    assert relative_error(picture, reference) <= EPS_TOLERANCE
    assert (picture - reference).abs().mean() * 127.5 < 1.0  # under one grey level (0-255) on average


def test_observers_see_fp32_attention_on_the_fast_path(unets):
    _, fast = unets
    seen = []

    class Recorder:
        def wants(self, layer):
            return layer.kind == "cross"

        def observe(self, layer, probs):
            seen.append(probs)

    x, t, context = unet_inputs()
    with torch.inference_mode(), observe_attention(Recorder()):
        fast(x, t, context)
    assert seen and all(probs.dtype == torch.float32 for probs in seen)
    assert torch.allclose(seen[0].sum(-1), torch.ones(()), atol=1e-5)


def test_an_fp32_model_on_the_cpu_keeps_its_convolution_weights_channels_last():
    """fp32 is not the fast path (no bf16, no packing), but its convolutions get the NHWC weights oneDNN wants
    (benchmarks/channels_last.py); the numbers are fp32's, to rounding."""
    torch.manual_seed(0)
    model = build(tiny()).eval()
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    context = torch.randn(2, 77, model.config.unet.context_dim)
    with torch.no_grad():
        reference = model.unet(x, t, context)
    model.to("cpu")
    convolutions = [p for module in (model.unet, model.vae) for p in module.parameters() if p.dim() == 4]
    assert convolutions and all(p.is_contiguous(memory_format=torch.channels_last) for p in convolutions)
    assert model.dtype == torch.float32 and not is_fast_path(model.unet)
    with torch.no_grad():
        torch.testing.assert_close(model.unet(x, t, context), reference, rtol=1e-4, atol=1e-5)


def test_a_weight_mapped_from_a_file_keeps_its_place_unless_asked(tmp_path):
    """keep_mapped: copying a file-backed weight into the NHWC layout would hold it in memory twice."""
    save_file({"weight": torch.randn(8, 4, 3, 3)}, str(tmp_path / "conv.safetensors"))
    conv = nn.Conv2d(4, 8, 3, bias=False)
    conv.weight.data = map_safetensors(tmp_path / "conv.safetensors")["weight"]
    fast_cpu.use_channels_last([conv], keep_mapped=True)
    assert fast_cpu.is_mapped(conv.weight) and not conv.weight.is_contiguous(memory_format=torch.channels_last)
    fast_cpu.use_channels_last([conv])  # the bf16 path's call: the layout matters more than the memory there
    assert not fast_cpu.is_mapped(conv.weight) and conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_model_cast_to_bf16_on_the_cpu_runs_the_fast_path():
    torch.manual_seed(0)
    model = build(tiny()).eval()
    assert not is_fast_path(model.unet)
    model.to(dtype=torch.bfloat16)
    assert all(is_fast_path(module) for module in (model.unet, model.vae))
    weights = model.unet.state_dict()
    assert all(tensor.is_contiguous(memory_format=torch.channels_last) for tensor in weights.values()
               if tensor.dim() == 4)
    model.to(dtype=torch.float32)  # back to fp32: values intact (bf16-rounded), layout irrelevant
    assert model.dtype == torch.float32 and not is_fast_path(model.unet)


def channels_last_bf16(*shape: int, seed: int = 3) -> torch.Tensor:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return x.to(FAST_DTYPE).contiguous(memory_format=torch.channels_last)


@needs_onednn_bf16
@pytest.mark.parametrize("kernel,stride,padding,groups", [(3, 1, 1, 1), (3, 2, 1, 1), (1, 1, 0, 1), (3, 2, 0, 1),
                                                          (3, 1, 1, 4)])
def test_packed_convolution_equals_conv2d_exactly(kernel, stride, padding, groups):
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 32, kernel, stride=stride, padding=padding, groups=groups)
    to_fast_path(conv)
    assert type(conv) is PackedConv2d
    with torch.inference_mode():
        for shape in [(2, 16, 8, 8), (1, 16, 12, 10), (2, 16, 8, 8)]:  # a second shape, then the first again
            x = channels_last_bf16(*shape)
            reference = F.conv2d(x, conv.weight, conv.bias, stride, padding, 1, groups)
            out = conv(x)
            assert out.is_contiguous(memory_format=torch.channels_last)
            assert torch.equal(out, reference)


def packed_after_one_forward(out_channels: int) -> tuple[PackedConv2d, torch.Tensor]:
    """A fast-path 3x3 convolution of 8 channels that has packed its weight for input x; (conv, x)."""
    torch.manual_seed(0)
    conv = to_fast_path(nn.Conv2d(8, out_channels, 3, padding=1))
    x = channels_last_bf16(1, 8, 6, 6)
    with torch.inference_mode():
        conv(x)
    return conv, x


@needs_onednn_bf16
def test_packed_convolution_follows_weight_changes():
    """The packed copy is made again after an in-place write (load_state_dict) or a new weight tensor."""
    conv, x = packed_after_one_forward(8)
    state = {name: tensor * 2 for name, tensor in conv.state_dict().items()}
    conv.load_state_dict(state)
    with torch.inference_mode():
        assert torch.equal(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1))
    conv.weight = nn.Parameter(-conv.weight.detach())
    with torch.inference_mode():
        assert torch.equal(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1))


def test_packed_convolution_falls_back_where_onednn_has_no_bf16(monkeypatch):
    """Where oneDNN refuses to reorder a bf16 weight (an AVX2-only CPU: "bf16 path needs the cpu support
    avx_ne_convert or avx512bw…"), a bf16 model still runs: nn.Conv2d's path, nothing packed."""
    monkeypatch.setattr(fast_cpu, "onednn_bf16_kernels", lambda: False)
    conv, x = packed_after_one_forward(8)
    assert conv not in _PACKED
    with torch.inference_mode():
        assert torch.equal(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1))


def test_packed_convolution_trains_and_copies_like_conv2d():
    """With gradients on, the layer is nn.Conv2d's own path; deepcopy works after a packed forward."""
    conv, x = packed_after_one_forward(4)
    copied = copy.deepcopy(conv)
    assert type(copied) is PackedConv2d and torch.equal(copied.weight, conv.weight)
    conv(x).float().sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


def test_vae_block_in_place_inference_equals_autograd_path():
    """ResnetBlock's in-place SiLU and residual add (no grad) give the very values of the autograd path."""
    torch.manual_seed(0)
    block = ResnetBlock(8, 16, 4)
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        in_place = block(x.clone())
    out = block(x.clone().requires_grad_())
    out.sum().backward()
    assert torch.equal(in_place, out.detach())
    assert block.conv1.weight.grad is not None
