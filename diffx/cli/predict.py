"""`diffx predict`: the ε / v / x̂0 lesson — one model evaluation read three ways (`diffx.prediction_views`)."""

from pathlib import Path
from typing import Annotated

import typer

from diffx.cli.core import print_written
from diffx.cli.options import (
    ForceOpt,
    GuidanceOpt,
    ModelChoice,
    PreviewOpt,
    PromptOpt,
    SamplingChoice,
    check_view_options,
    option_groups,
)
from diffx.cli.progress import StepProgress
from diffx.files import check_outputs


@option_groups
def predict(
    prompt: PromptOpt = "",
    step: Annotated[list[int] | None, typer.Option(
        help="A step to show (1 = the first); repeat for several. Default: the first, middle and last.",
        show_default=False)] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="The picture to write (.png, .jpg or .webp).")] = Path(
        "predict.png"),
    sampling: SamplingChoice = SamplingChoice(),
    guidance: GuidanceOpt = None,
    model: ModelChoice = ModelChoice(),
    preview: PreviewOpt = "auto",
    force: ForceOpt = False,
) -> None:
    """Show what the model predicts at a step as ε̂ (the noise), v̂ (the velocity) and x̂0 (the clean image).

    One row per step: x_t, x̂0, ε̂ and v̂ = √ᾱ ε̂ − √(1−ᾱ) x̂0, the model's own output marked (ε for SD1.x,
    v for v-prediction models). Early v̂ looks like −x̂0, late like ε̂.

    Example: diffx predict --prompt "a red circle" --step 2 --step 12 --step 25 --out evx.png
    """
    from diffx.render import save_png
    from diffx.trace.tracer import generate_traced
    from diffx.views.prediction import prediction_view
    from diffx.views.steps import TRACE_RECORD_STEPS, step_indices

    check_view_options(preview)
    check_outputs([], force, picture=out)
    settings = sampling.settings(prompt, guidance)
    loaded = model.load()
    steps = settings.resolved(loaded).steps
    step_indices(steps, step)  # a step past the run's end is refused before it runs
    with StepProgress() as progress:
        traced = generate_traced(loaded, settings, options=TRACE_RECORD_STEPS,
                                 progress=progress)
    save_png(prediction_view(traced.traces[0], step, preview, loaded), out, force)
    print_written([out])
