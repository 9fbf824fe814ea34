"""The commands that edit attention: `edit` (prompt-to-prompt) and `weights` (what word weights do).

Each parses its options, calls `diffx.editing` / `diffx.edit_views` and prints what it wrote; the heavy
modules are imported inside the commands, so `diffx --help` answers at once.
"""

from pathlib import Path
from typing import Annotated

import typer

from diffx.cli.core import print_written
from diffx.cli.options import (
    ForceOpt,
    FrameMsOpt,
    GifOpt,
    GuidanceOpt,
    ModelChoice,
    OutOpt,
    PreviewOpt,
    PromptOpt,
    SamplingChoice,
    check_frame_ms,
    check_view_options,
    option_groups,
)
from diffx.cli.progress import StepProgress
from diffx.errors import InvalidArgumentError
from diffx.files import check_outputs


def parse_reweight(text: str | None) -> dict[str, float]:
    """--reweight "red=2,circle=0.5" → {"red": 2.0, "circle": 0.5}."""
    if not text:
        return {}
    factors = {}
    for item in text.split(","):
        word, _, value = item.partition("=")
        try:
            factors[word.strip()] = float(value)
        except ValueError:
            raise InvalidArgumentError(f"--reweight {text!r}: expected WORD=FACTOR pairs separated by commas, "
                                       "e.g. red=2,circle=0.5") from None
    return factors


@option_groups
def edit(
    prompt: PromptOpt = "",
    to: Annotated[str | None, typer.Option(
        "--to", help="The edited prompt (default: the same prompt, e.g. with --reweight).", show_default=False)
    ] = None,
    tau: Annotated[float, typer.Option(
        help="Inject the source's cross-attention for this fraction of the steps (0-1).")] = 0.6,
    self_tau: Annotated[float, typer.Option(
        help="Also inject its self-attention (layers of at most 16×16 queries) for this fraction (0-1).")] = 0.0,
    reweight: Annotated[str | None, typer.Option(
        help="Scale words' injected attention: WORD=FACTOR,... (e.g. red=2).", show_default=False)] = None,
    out: OutOpt = None,
    gif: GifOpt = None,
    sampling: SamplingChoice = SamplingChoice(),
    guidance: GuidanceOpt = None,
    model: ModelChoice = ModelChoice(),
    preview: PreviewOpt = "auto",
    frame_ms: FrameMsOpt = 100,
    force: ForceOpt = False,
) -> None:
    """Prompt-to-prompt (Hertz et al. 2022): edit the prompt and keep the picture.

    Runs --prompt, then --to with the same seed twice: on its own, and with the source run's
    cross-attention maps injected for the first --tau of the steps (word swap: "circle" → "square";
    refinement: added words keep their own maps; --reweight scales a word's maps). Writes the three side
    by side, labelled (--out, default edit.png), and with --gif x̂0 of all three at every step.

    Example: diffx edit --prompt "a red circle" --to "a red square" --tau 0.6 --out edit.png
    """
    from diffx.experiments.prompt_to_prompt import check_edit_prompt, check_fraction, prompt_to_prompt
    from diffx.experiments.prompt_to_prompt_views import edit_frames, edit_picture
    from diffx.render import save_animation, save_png

    check_view_options(preview)
    check_frame_ms(frame_ms)
    factors = parse_reweight(reweight)
    check_fraction("tau", tau)
    check_fraction("self-attention tau", self_tau)
    out = out or Path("edit.png")
    check_outputs([], force, gif, picture=out)
    settings = sampling.settings(prompt, guidance)  # the prompts are checked here and below, before the model loads
    if to is not None:
        check_edit_prompt(to)
    loaded = model.load()
    with StepProgress(runs=3) as progress:
        result = prompt_to_prompt(loaded, settings, to, tau=tau, self_tau=self_tau,
                                  reweight=factors, progress=progress)
    picture = edit_picture(result)
    frames = edit_frames(result, preview, loaded) if gif is not None else None
    save_png(picture, out, force)
    if frames is not None:
        save_animation(frames, gif, frame_ms, force)
    print_written([out, gif])


@option_groups
def weights(
    prompt: PromptOpt = "",
    out: OutOpt = None,
    sampling: SamplingChoice = SamplingChoice(),
    guidance: GuidanceOpt = None,
    model: ModelChoice = ModelChoice(),
    force: ForceOpt = False,
) -> None:
    """Show what word weights ("a (red:1.5) circle", "[blue]", as the web UIs write them) do.

    Prints how the prompt is read (the clean prompt, each word's weight) and writes (--out, default
    weights.png) the change of the text encoder's output per token, ‖e′ − e‖ (each token's vector is
    multiplied by its weight, then the whole context rescaled to its old mean), above the pictures
    generated without and with the weights from the same seed.

    Example: diffx weights --prompt "a (red:1.8) circle on a [pale blue] background" --out weights.png
    """
    from diffx.cli.core import OUT
    from diffx.experiments.prompt_to_prompt_views import weights_view
    from diffx.render import save_png
    from diffx.views.tables import tokens_table

    out = out or Path("weights.png")
    check_outputs([], force, picture=out)
    settings = sampling.settings(prompt, guidance)
    view = weights_view(model.load(), settings)
    OUT.print(tokens_table(view.tokens))
    save_png(view.picture, out, force)
    print_written([out])
