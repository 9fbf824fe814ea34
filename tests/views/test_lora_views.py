"""A LoRA report for the terminal and as a chart (diffx.views.lora): the tables say what they show, blocks not
adapted are listed too, and the chart has a panel per part with the file and the scale in its title."""

import numpy as np
from rich.console import Console

from diffx.models.configs import tiny
from diffx.models.stable_diffusion import build_without_weights
from diffx.views.lora import lora_chart, lora_tables
from diffx.weights.lora_inspect import inspect_lora
from tests.weights.lora_files import adapted_layers, kohya_tensors, write_lora


def test_tables_and_chart_of_a_report(tmp_path):
    skeleton = build_without_weights(tiny())
    file = write_lora(tmp_path / "style.safetensors", {
        **kohya_tensors(adapted_layers(skeleton.unet, ("attn2.to_k",)), "lora_unet_", rank=2, alpha=1, seed=0),
        **kohya_tensors(adapted_layers(skeleton.text_encoder, ("fc1",)), "lora_te_", rank=2, alpha=1, seed=1)})
    report = inspect_lora(file, skeleton, 0.5)
    console = Console(record=True, width=200)
    for table in lora_tables(report):
        console.print(table)
    text = console.export_text()
    for shown in ("LoRA style.safetensors", "scale s", "layers adapted, by kind", "U-Net attention (cross)",
                  "text encoder MLP", "input block 0", "‖ΔW‖_F at s = 0.5", "TE layer 1"):
        assert shown in text, shown
    assert "trigger words" not in text  # the file's header has no ss_tag_frequency
    chart = lora_chart(report)
    assert chart.mode == "RGB" and chart.size[1] > 400
    assert len(np.unique(np.asarray(chart).reshape(-1, 3), axis=0)) > 10
