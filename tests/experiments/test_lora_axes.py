"""compare's LoRA axes (diffx.experiments.lora_axes): `lora=0` gives the picture without the LoRA exactly,
`lora-blocks=all` the picture with it, each U-Net section alone something between; the LoRAs' scale and blocks are
put back after, the axes' values are checked, and without a LoRA on the model the axes are refused before any run."""

import numpy as np
import pytest

from diffx.errors import InvalidArgumentError
from diffx.experiments.sweeps import compare, parse_axis
from diffx.pipeline.generation import generate
from diffx.weights.lora_apply import applied_loras, apply_lora
from tests.tiny import tiny_settings
from tests.weights.lora_files import ATTENTION_LEAVES, adapted_layers, kohya_tensors, write_lora


@pytest.fixture
def styled(tiny_model, tmp_path):
    """The tiny model with a LoRA of its U-Net's and text encoder's attention at scale 0.8 (taken off after), and the
    picture of the model without it."""
    plain = generate(tiny_model, tiny_settings()).images[0]
    file = write_lora(tmp_path / "style.safetensors", {
        **kohya_tensors(adapted_layers(tiny_model.unet, ATTENTION_LEAVES), "lora_unet_", rank=4, alpha=4, seed=0),
        **kohya_tensors(adapted_layers(tiny_model.text_encoder, ATTENTION_LEAVES), "lora_te_", rank=4, alpha=4,
                        seed=1)})
    applied = apply_lora(tiny_model, file, 0.8)
    yield tiny_model, plain, applied
    applied.remove()


def test_scale_zero_is_the_model_without_the_lora_and_blocks_all_the_model_with_it(styled):
    model, plain, applied = styled
    with_lora = generate(model, tiny_settings()).images[0]
    assert not np.array_equal(with_lora, plain)
    scales = compare(model, tiny_settings(), ("lora", [0.0, 0.8]), None)
    assert np.array_equal(scales.generations[0][0].images[0], plain)
    assert np.array_equal(scales.generations[0][1].images[0], with_lora)
    blocks = compare(model, tiny_settings(), ("lora-blocks", ["all", "in", "mid", "out"]), ("lora", [0.0, 0.8]))
    pictures = [[g.images[0] for g in row] for row in blocks.generations]
    assert all(np.array_equal(picture, plain) for picture in pictures[0])  # s = 0: no block matters
    assert np.array_equal(pictures[1][0], with_lora)
    for section in pictures[1][1:]:  # one U-Net section (and the text encoder): neither picture
        assert not np.array_equal(section, with_lora) and not np.array_equal(section, plain)
    assert (applied.scale, applied.unet_blocks) == (0.8, "all")  # put back
    assert applied_loras(model) == [applied]


def test_lora_axes_need_a_lora(tiny_model):
    assert applied_loras(tiny_model) == []
    with pytest.raises(InvalidArgumentError, match="none is applied; give one with --lora"):
        compare(tiny_model, tiny_settings(), ("sampler", ["ddim"]), ("lora-blocks", ["in"]))


@pytest.mark.parametrize(("text", "says"), [("lora=nan", "finite"), ("lora=9", "within ±4"), ("lora=x", "a number"),
                                            ("lora-blocks=all,down", "lora-blocks value"), ("lora=", "no values")])
def test_bad_axis_values_are_refused(text, says):
    with pytest.raises(InvalidArgumentError, match=says):
        parse_axis(text)


def test_axis_values_are_read():
    assert parse_axis("lora=0,0.5,-1") == ("lora", [0.0, 0.5, -1.0])
    assert parse_axis("lora-blocks=ALL,in,mid,out") == ("lora-blocks", ["all", "in", "mid", "out"])
