"""The commands that look things up or write a page without generating: `tokens`, `models`, `report`."""

from pathlib import Path
from typing import Annotated

import typer

from diffx.cli.core import OUT
from diffx.cli.options import EmbeddingOpt, ForceOpt, ModelChoice, PreviewOpt, check_view_options, option_groups


def tokens(
    prompt: Annotated[str, typer.Argument(help="The prompt to tokenize.", show_default=False)],
    embedding: EmbeddingOpt = None,
) -> None:
    """Show how CLIP's tokenizer reads a prompt.

    Each word → its BPE tokens → their ids → their positions in the 77-token window, with the start,
    end and padding tokens and what the limit cuts off. Word weights ("a (red:1.3) circle", "[blue]")
    are read as the web UIs write them: the table shows the prompt without brackets and each word's weight.
    With --embedding, the embedding's word reads as its new tokens (ids after the vocabulary's last).

    Example: diffx tokens "a (red:1.3) circle left of a blue square"
    """
    from diffx.models.tokenizer import ClipTokenizer
    from diffx.pipeline.prompt_weights import weighted_tokens
    from diffx.views.tables import tokens_table
    from diffx.weights.embedding import EmbeddingSpec, embedding_tokenizer

    specs = [EmbeddingSpec.parse(text) for text in embedding or ()]
    OUT.print(tokens_table(weighted_tokens(embedding_tokenizer(ClipTokenizer.default(), specs), prompt)))


def models() -> None:
    """List the models diffx can use without the network; the first is the default.

    The architecture column says what each is: a single file's family and size read from its tensors'
    names and shapes (SD1.x presets by name, other SD1.x sizes spelled out; SD2.x and SDXL are recognised
    but cannot run yet), a folder's from its config.

    Example: diffx models
    """
    from diffx.devices import cpu_description
    from diffx.views.tables import models_table
    from diffx.weights.discovery import find_models
    from diffx.weights.load import describe_architecture

    sources = find_models()
    OUT.print(models_table(sources, [describe_architecture(source) for source in sources]))
    OUT.print(cpu_description())


@option_groups
def report(
    trace_files: Annotated[list[Path], typer.Argument(help="Trace files (several: columns side by side).",
                                                      show_default=False)],
    html: Annotated[Path, typer.Option(help="The HTML file to write.")] = Path("report.html"),
    preview: PreviewOpt = "auto",
    model: ModelChoice = ModelChoice(),
    force: ForceOpt = False,
) -> None:
    """Write an interactive HTML page for saved traces: a step slider, x_t / x̂0 / ε̂ / guidance panels,
    clickable words with their attention maps, and the schedule with the current step marked.

    A model is loaded only for --preview vae when a trace holds no VAE decodes of x̂0 (--preview auto then
    shows the latent preview, and says so on the page).

    Example: diffx report out.safetensors --html out.html
    """
    from diffx.files import check_outputs
    from diffx.report.page import write_report
    from diffx.trace.record import load_trace

    check_view_options(preview)
    check_outputs([html], force)
    model.check_given()  # before the traces are read: a model is loaded only for some
    traces = [load_trace(path) for path in trace_files]
    written = write_report(traces, html, force, model=model.load_to_decode(preview, traces), preview=preview)
    OUT.print(f"wrote {written}")
