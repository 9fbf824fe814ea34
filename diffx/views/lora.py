"""A LoRA file inspected (`weights.lora_inspect.LoraReport`), for the terminal and as a chart: its metadata and
trigger words, the kinds of layers it adapts, and the strength ‖ΔW‖_F of its update per U-Net or MMDiT block and
text-encoder layer, in the order they run."""

from __future__ import annotations

from PIL import Image
from rich.table import Table

from diffx.render.bars import BarPanel, plot_bars
from diffx.weights.lora_inspect import BlockUpdate, LoraReport

NORM_LABEL = "‖ΔW‖_F  (Frobenius norm of s·(alpha/r)·B A)"


def _numbers(values: tuple[float, ...]) -> str:
    return ", ".join(f"{value:g}" for value in values)


def lora_tables(report: LoraReport) -> list[Table]:
    """The report as terminal tables: the file (format, family, ranks, alphas, training metadata), its trigger
    words, the layers it adapts by kind, and ‖ΔW‖_F per block and text-encoder layer."""
    matched = "recognised from its layers" if report.recognised else "matched against the model given"
    about = Table(title=f"LoRA {report.path.name}", show_header=False)
    about.add_column(style="bold")
    about.add_column(overflow="fold")
    rows = {"format": report.format, "base model": f"{report.family} ({report.model}, {matched})",
            "rank r": _numbers(report.ranks), "alpha": _numbers(report.alphas),
            "network module": report.network_module or "not stated", "layers adapted": str(len(report.layers)),
            "scale s": f"{report.scale:g}", "‖ΔW‖_F, all layers": f"{report.total_norm:.4g}", **report.training}
    for name, value in rows.items():
        about.add_row(name, value)
    tables = [about]
    if report.trigger_words:
        words = Table(title="trigger words: the most frequent caption tags (ss_tag_frequency)")
        words.add_column("tag")
        words.add_column("count", justify="right")
        for tag, count in report.trigger_words:
            words.add_row(tag, str(count))
        tables.append(words)
    parts = Table(title="layers adapted, by kind")
    parts.add_column("kind")
    parts.add_column("layers", justify="right")
    for part, count in report.parts.items():
        parts.add_row(part, str(count))
    tables.append(parts)
    for title, blocks in ((f"{report.network} blocks, in the order they run", report.network_blocks),
                          ("text-encoder layers, first to last", report.text_layers)):
        if blocks:
            tables.append(_blocks_table(f"{title}: ‖ΔW‖_F at s = {report.scale:g}", blocks))
    return tables


def _blocks_table(title: str, blocks: tuple[BlockUpdate, ...]) -> Table:
    table = Table(title=title)
    for column in ("block", "group", "layers adapted", "‖ΔW‖_F"):
        table.add_column(column, justify="right" if column in ("layers adapted", "‖ΔW‖_F") else "left")
    for block in blocks:
        table.add_row(block.label, block.group, str(block.layers), f"{block.norm:.4g}",
                      style="dim" if block.layers == 0 else None)
    return table


def lora_chart(report: LoraReport) -> Image.Image:
    """‖ΔW‖_F per block of the denoiser (a U-Net's coloured by input / middle / output blocks, an MMDiT's joint
    blocks apart from its embeddings and final layer) and, in a second panel, per text-encoder layer (coloured by
    encoder): horizontal bars, first-run at the top, titled with the file and s."""
    panels = [BarPanel(title, [b.label for b in blocks], [b.norm for b in blocks], [b.group for b in blocks])
              for title, blocks in ((f"{report.network} blocks, in the order they run", report.network_blocks),
                                    ("text-encoder layers, first to last", report.text_layers))]
    title = (f"LoRA {report.path.name} at scale s = {report.scale:g}: update strength per block · "
             f"{report.family} ({report.model}), rank {_numbers(report.ranks)}, alpha {_numbers(report.alphas)}")
    return plot_bars(panels, title, NORM_LABEL)
