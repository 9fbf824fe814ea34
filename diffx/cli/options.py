"""The options the commands share, and the groups they arrive in.

Each `…Opt` alias is one option's definition (flag, help, default display), the same meaning in every
command that takes it. Options that travel together are declared once, as the fields of a group
dataclass: `ModelChoice` (--model … --prediction-type), `SamplingChoice` (--negative-prompt … --size) and
`InitImageChoice` (--image/--t/--strength/--mask). A command takes a whole group as one parameter, and
`option_groups` lists the group's fields in the signature Typer reads:

    @option_groups
    def denoise(prompt: PromptOpt = "", model: ModelChoice = ModelChoice()):
        loaded = model.load()
"""

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NamedTuple

import typer

from diffx.cli.core import ERR
from diffx.errors import InvalidArgumentError, check_choice, elide

if TYPE_CHECKING:
    import torch

    from diffx.models.configs import ModelConfig
    from diffx.models.stable_diffusion import StableDiffusion
    from diffx.pipeline.settings import GenerationSettings
    from diffx.trace.record import Trace
    from diffx.weights.discovery import ModelSource
    from diffx.weights.embedding import Embedding, EmbeddingSpec
    from diffx.weights.lora import LoraSpec

ModelOpt = Annotated[str | None, typer.Option(
    "--model", "-m", show_default=False,
    help="A .ckpt/.safetensors file, a diffusers or diffx folder, or 'embedded'. "
         "Default: $DIFFX_MODEL, else the embedded model.")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
DtypeOpt = Annotated[str, typer.Option(
    help="auto (fp16 on a GPU; on the CPU, the bf16 fast path for SD-size models where the CPU has native "
         "bf16 (see diffx models), else fp32), fp32, fp16 or bf16 (on the CPU: bf16, channels-last).")]
WeightsOpt = Annotated[str, typer.Option(
    help="A checkpoint with both: ema (the U-Net's EMA weights, as CompVis' scripts load) or main.")]
ConfigOpt = Annotated[str | None, typer.Option(
    "--config", show_default=False,
    help="A single file's architecture preset when the file cannot say (e.g. sd21-base: SD 2.x 512-base, ε; "
         "sd21-v: 768-v). Default: read from the file.")]
PredictionTypeOpt = Annotated[str | None, typer.Option(
    "--prediction-type", show_default=False,
    help="What the model predicts, epsilon or v_prediction, whatever its files say (e.g. ε for an SD 2.x file of "
         "a size no preset has and no .yaml beside it). Default: the model's.")]
LoraOpt = Annotated[list[str] | None, typer.Option(
    "--lora", metavar="FILE[:SCALE]", show_default=False,
    help="Apply a LoRA (kohya/A1111 or diffusers/PEFT .safetensors, LoCon, .pt) with a scale, -4 to 4 "
         "(default 1); repeat to stack several. Checked against the model before its weights load.")]
EmbeddingOpt = Annotated[list[str] | None, typer.Option(
    "--embedding", metavar="FILE[:TOKEN]", show_default=False,
    help="Load a textual inversion embedding (A1111 .pt/.safetensors, diffusers learned_embeds, SDXL clip_l/clip_g) "
         "as the word TOKEN (default: the file's token, else <file stem>) to write in the prompt; repeatable.")]
PromptOpt = Annotated[str, typer.Option("--prompt", "-p", help="What to draw; empty = unconditional.")]
NegativeOpt = Annotated[str | None, typer.Option(
    help='What to steer away from (the unconditional half of CFG). Default: none (SDXL then uses zeros, as '
         'diffusers; --negative-prompt "" encodes the empty text).',
    show_default=False)]
SamplerOpt = Annotated[str | None, typer.Option(
    help="ddpm, ddim, euler, euler_a, heun or dpmpp_2m. Default: the model's.", show_default=False)]
ScheduleOpt = Annotated[str | None, typer.Option(
    help="β schedule: linear, scaled_linear or cosine. Default: the model's training schedule.",
    show_default=False)]
SpacingOpt = Annotated[str | None, typer.Option(
    help="Timestep spacing: leading, trailing or linspace. Default: the model's.", show_default=False)]
KarrasOpt = Annotated[bool, typer.Option("--karras", help="Karras σ steps (euler, euler_a, heun, dpmpp_2m).")]
StepsOpt = Annotated[int | None, typer.Option(help="Sampling steps. Default: the model's.", show_default=False)]
GuidanceOpt = Annotated[float | None, typer.Option(
    help="Classifier-free guidance weight w (1 = none). Default: the model's.", show_default=False)]
GuidanceRescaleOpt = Annotated[float, typer.Option(
    help="Guidance rescale φ, 0-1 (Lin et al. 2023): pull the guided prediction's spread back to the "
         "conditional one's; 0.7 against over-exposure at high guidance.")]
SeedOpt = Annotated[int, typer.Option(help="Random seed.")]
SizeOpt = Annotated[str | None, typer.Option(
    help="Image size: 512 or WIDTHxHEIGHT. Default: the model's.", show_default=False)]
ImageOpt = Annotated[Path | None, typer.Option(
    help="Start from this picture, resized to --size (image-to-image, SDEdit).", show_default=False)]
TimestepOpt = Annotated[int | None, typer.Option(
    "--t", help="With --image: the timestep to noise it to, 0-999 (instead of --strength).", show_default=False)]
StrengthOpt = Annotated[float | None, typer.Option(
    help="With --image: how much of the schedule to run, 0-1. Default: 0.8.", show_default=False)]
MaskOpt = Annotated[Path | None, typer.Option(
    help="With --image: inpainting mask the size of the image file, read as grey levels: pixels at least 50% "
         "bright (white) are repainted, darker ones (black) kept; a colour counts by its brightness (pure red "
         "= 30%: kept). A warning says when a mask selects nothing or everything.", show_default=False)]
OutOpt = Annotated[Path | None, typer.Option(
    "--out", "-o", help="Main output picture (.png, .jpg or .webp); companion files are named after it.",
    show_default=False)]
GifOpt = Annotated[Path | None, typer.Option(help="Animation file (.gif, or .mp4 with imageio-ffmpeg).",
                                                show_default=False)]
ForceOpt = Annotated[bool, typer.Option("--force", "-f", help="Overwrite existing output files.")]
FrameMsOpt = Annotated[int, typer.Option(help="Milliseconds per animation frame.")]
PreviewOpt = Annotated[str, typer.Option(
    help="x̂0 pictures: auto (VAE decode when the decoder is cheap, as the embedded model's; else the "
         "latent preview), fast (the latent preview: each latent pixel mapped to a colour), tiny (the model's "
         "distilled preview decoder, ~5x cheaper than the VAE; the embedded model has one) or vae (VAE decode).")]
AttnScaleOpt = Annotated[str, typer.Option(
    help="Attention heatmaps: word (each map scaled to its own maximum) or shared (one range for all words "
         "and steps, brightness comparable).")]
# A string, checked by diffx.threads like $DIFFX_THREADS, so both are refused with the same line.
ThreadsOpt = Annotated[str | None, typer.Option(
    "--threads", metavar="<int>", show_default=False,
    help="CPU threads torch computes with, 1 to the CPU count. Default: $DIFFX_THREADS, else OMP_NUM_THREADS "
         "if set, else the physical cores (one fewer from 3 on, left to the rest of the machine).")]
HtmlOpt = Annotated[Path | None, typer.Option(
    help="Also write an interactive, self-contained HTML report (slider, panels, clickable words).",
    show_default=False)]


class CheckedModelChoice(NamedTuple):
    """A `ModelChoice` resolved (`ModelChoice.check`): what `load_model` is given."""

    source: "ModelSource"
    device: "torch.device"
    dtype: "torch.dtype"
    config: "ModelConfig | None"
    loras: "tuple[LoraSpec, ...]"
    embeddings: "tuple[Embedding, ...]"
    network: str = "U-Net"  # the denoiser the LoRAs were read against: "U-Net", or "MMDiT" (SD3)


@dataclass(frozen=True)
class ModelChoice:
    """--model, --device, --dtype, --weights, --config, --prediction-type, --lora, --embedding: which weights, on
    which device, in which precision, predicting what, adapted by which LoRAs, knowing which new words."""

    model: ModelOpt = None
    device: DeviceOpt = "auto"
    dtype: DtypeOpt = "auto"
    weights: WeightsOpt = "ema"
    config: ConfigOpt = None
    prediction_type: PredictionTypeOpt = None
    lora: LoraOpt = None
    embedding: EmbeddingOpt = None

    def check(self) -> "CheckedModelChoice":
        """Every choice resolved and checked without reading the model's weights: its source (default: $DIFFX_MODEL,
        else the embedded model), the device, the dtype, the --weights choice, the --config preset, the
        --prediction-type and each --lora (the file there, the scale finite and in range, every key a layer of the
        model's configuration: `read_loras`) and each --embedding (read, of the model's width, its token new:
        `read_embeddings`)."""
        from diffx.devices import model_bytes_on_disk, resolve_device, resolve_dtype
        from diffx.weights.discovery import resolve_model_source
        from diffx.weights.embedding import read_embeddings
        from diffx.weights.lora_apply import read_loras

        config = self._choices()
        embeddings = self.embedding_specs()
        loras = self.lora_specs()
        source = resolve_model_source(self.model)
        target = resolve_device(self.device)
        read = read_loras(source, loras, config)
        return CheckedModelChoice(source, target, resolve_dtype(self.dtype, target, model_bytes_on_disk(source.path)),
                                  config, loras, tuple(read_embeddings(source, embeddings, config)),
                                  read[0].network if read else "U-Net")

    def lora_specs(self) -> "tuple[LoraSpec, ...]":
        """Each --lora FILE[:SCALE], parsed and checked (`LoraSpec.parse`)."""
        from diffx.weights.lora import LoraSpec

        return tuple(LoraSpec.parse(text) for text in self.lora or ())

    def embedding_specs(self) -> "tuple[EmbeddingSpec, ...]":
        """Each --embedding FILE[:TOKEN], parsed and checked (`EmbeddingSpec.parse`)."""
        from diffx.weights.embedding import EmbeddingSpec

        return tuple(EmbeddingSpec.parse(text) for text in self.embedding or ())

    def check_given(self) -> None:
        """The choices given checked as `check` checks them, the default model not looked for unless a --lora or an
        --embedding must be checked against it: for runs that load a model only for some inputs (render, report,
        attention --trace), which otherwise need no $DIFFX_MODEL."""
        from diffx.devices import resolve_device, resolve_dtype

        if self.model is not None or self.lora or self.embedding:  # checked against the model `load` would load
            self.check()
            return
        self._choices()
        resolve_dtype(self.dtype, resolve_device(self.device))

    def _choices(self) -> "ModelConfig | None":
        """--weights and --prediction-type checked; the --config preset, checked (None without one)."""
        from diffx.models.configs import PRESETS
        from diffx.weights.load import WEIGHT_CHOICES, check_prediction_type

        preset = None if self.config is None else check_choice("--config preset", self.config, tuple(PRESETS))
        check_choice("weights", self.weights, WEIGHT_CHOICES)
        check_prediction_type(self.prediction_type)
        return None if preset is None else PRESETS[preset]()

    def load(self) -> "StableDiffusion":
        """`--model` (default: $DIFFX_MODEL, else the embedded model) on `--device` in `--dtype`; one
        `note:` line on stderr says what was recognised and which weights were taken, one more per LoRA and per
        embedding, all checked against the model's configuration before its weights are read."""
        from diffx.weights.embedding import attach_embedding
        from diffx.weights.lora_apply import load_model_with_loras

        source, target, precision, config, loras, embeddings, _ = self.check()

        def note(line: str) -> None:
            ERR.print(f"note: {line}", soft_wrap=True, markup=False)

        with ERR.status(f"loading {source.path}"):
            model = load_model_with_loras(source, loras, device=target, dtype=precision, weights=self.weights,
                                          config=config, prediction_type=self.prediction_type, note=note)
        for embedding in embeddings:
            tokens = attach_embedding(model, embedding)
            note(f"embedding {embedding.path.name}: {embedding.token} reads as {' '.join(tokens)}")
        return model

    def read_config(self) -> "ModelConfig":
        """The configuration of the model `load` would load (its scheduler, default steps…), without its weights;
        every choice is checked as `check` checks it, so a bad one is refused also where no weights are read."""
        from diffx.weights.load import read_config

        source, _, _, config, *_ = self.check()
        return read_config(source, config)

    def load_to_decode(self, preview: str, traces: "Sequence[Trace]") -> "StableDiffusion | None":
        """The model for drawing saved `traces`: loaded for --preview tiny, and for vae when a trace lacks some
        VAE decode of x̂0 (--preview auto draws what the traces hold: their decodes, else the latent preview)."""
        from diffx.views.steps import missing_decodes

        return self.load() if preview == "tiny" or preview == "vae" and any(map(missing_decodes, traces)) else None


@dataclass(frozen=True)
class SamplingChoice:
    """--negative-prompt, --sampler, --schedule, --spacing, --karras, --steps, --seed, --size,
    --guidance-rescale: how to sample, everything but the prompt and the guidance weight (cfg-sweep sweeps
    that one)."""

    negative_prompt: NegativeOpt = None
    sampler: SamplerOpt = None
    schedule: ScheduleOpt = None
    spacing: SpacingOpt = None
    karras: KarrasOpt = False
    steps: StepsOpt = None
    seed: SeedOpt = 0
    size: SizeOpt = None
    guidance_rescale: GuidanceRescaleOpt = 0.0

    def settings(self, prompt: str, guidance: float | None = None) -> "GenerationSettings":
        """The settings these options and `prompt`, `guidance` give, checked as far as they can be without the model
        (`check_settings`): call it before loading one."""
        from diffx.pipeline.settings import GenerationSettings, check_settings

        width, height = parse_size(self.size)
        settings = GenerationSettings(prompt=prompt, negative_prompt=self.negative_prompt, width=width, height=height,
                                      steps=self.steps, guidance=guidance, sampler=self.sampler,
                                      schedule=self.schedule, spacing=self.spacing, karras=self.karras, seed=self.seed,
                                      guidance_rescale=self.guidance_rescale)
        check_settings(settings)
        return settings


@dataclass(frozen=True)
class InitImageChoice:
    """--image with --t or --strength (SDEdit), and --mask (inpainting)."""

    image: ImageOpt = None
    t: TimestepOpt = None
    strength: StrengthOpt = None
    mask: MaskOpt = None


OPTION_GROUPS = (ModelChoice, SamplingChoice, InitImageChoice)


def option_groups(command: Callable) -> Callable:
    """Let `command` take option groups: a parameter whose annotation is one of `OPTION_GROUPS` stands,
    in the signature Typer reads, for the group's fields (each its own option, in field order); the
    command is then called with one group object built from those options."""
    signature = inspect.signature(command)
    groups = {name: param.annotation for name, param in signature.parameters.items()
              if param.annotation in OPTION_GROUPS}
    options = []
    for name, param in signature.parameters.items():
        if name not in groups:
            options.append(param)
            continue
        options += [inspect.Parameter(field.name, param.kind, default=field.default,
                                      annotation=field.type) for field in fields(groups[name])]

    @functools.wraps(command)
    def run(**values):
        for name, group in groups.items():
            values[name] = group(**{field.name: values.pop(field.name) for field in fields(group)})
        return command(**values)

    run.__signature__ = signature.replace(parameters=options)
    run.__annotations__ = {param.name: param.annotation for param in options}
    return run


def with_threads(command: Callable) -> Callable:
    """Give `command` the `--threads` option (`ThreadsOpt`): before the command runs, the count is checked and
    set (`diffx.threads.resolve_threads`, `use_threads`), so every command that computes with torch takes it
    the same way."""
    signature = inspect.signature(command)
    option = inspect.Parameter("threads", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ThreadsOpt)

    @functools.wraps(command)
    def run(*, threads: str | None = None, **values):
        from diffx.threads import resolve_threads, use_threads

        use_threads(resolve_threads(threads))
        return command(**values)

    run.__signature__ = signature.replace(parameters=[*signature.parameters.values(), option])
    run.__annotations__ = {**getattr(command, "__annotations__", {}), "threads": ThreadsOpt}
    return run


def parse_size(text: str | None) -> tuple[int | None, int | None]:
    """--size "512" or "512x768" (width x height) → (width, height); None → (None, None)."""
    if text is None:
        return None, None
    width, _, height = text.lower().partition("x")
    try:
        sides = int(width), int(height or width)
    except ValueError:
        raise InvalidArgumentError(f"--size {text!r} is not a size; write 512 or WIDTHxHEIGHT like 512x768") from None
    if not all(0 < side <= 8192 for side in sides):
        raise InvalidArgumentError(f"--size {text!r}: each side must be 1 to 8192 pixels, e.g. 512 or 512x768")
    return sides


def parse_list(text: str, kind: type, option: str) -> list:
    """"1,3,7.5" → [1.0, 3.0, 7.5] (each value converted with `kind`)."""
    items = text.split(",")
    if len(items) > 1 and not all(item.strip() for item in items):
        raise InvalidArgumentError(f"{option} {elide(text, 40)} has an empty value between commas; "
                                   "give e.g. 1,3,7.5")
    try:
        values = [kind(item) for item in items if item.strip()]
    except ValueError:
        raise InvalidArgumentError(f"{option} {elide(text, 40)}: expected {kind.__name__}s separated by commas"
                                   ) from None
    if not values:
        raise InvalidArgumentError(f"{option} is empty; give values separated by commas")
    if kind is float:
        from diffx.errors import check_finite

        for value in values:
            check_finite(option, value)
    return values


def check_frame_ms(frame_ms: int) -> None:
    """--frame-ms before any work: a frame must last at least 1 ms."""
    if frame_ms <= 0:
        raise InvalidArgumentError(f"--frame-ms must be a positive number of milliseconds, got {frame_ms}")


def check_view_options(preview: str, attn_scale: str = "word") -> None:
    """Check --preview and --attn-scale before any slow work."""
    from diffx.views.steps import ATTENTION_SCALES, PREVIEWS

    check_choice("preview", preview, PREVIEWS)
    check_choice("attention scale", attn_scale, ATTENTION_SCALES)
