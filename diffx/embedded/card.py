"""MODEL_CARD.md of an embedded model: what it is, every run that trained it, how well it follows prompts."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from diffx.embedded.captions import CaptionNoise
from diffx.embedded.history import read_runs
from diffx.embedded.quality import last_line, meets_targets, summary_rows
from diffx.embedded.world_quality import (
    GROUPS,
    TUNING_FILE,
    adherence_rows,
    check_rows,
    curve_rows,
    world_last_line,
    world_targets,
)
from diffx.embedded.worlds import get_world
from diffx.files import atomic_output
from diffx.models.any_model import SD3_FAMILY, AnyModel
from diffx.models.configs import ModelConfig
from diffx.models.sd3 import SD3Config
from diffx.render import save_png
from diffx.weights.load import load_model

GUIDANCE_PLOT = "guidance_curve.png"  # beside MODEL_CARD.md: a v2 model's adherence and diversity against w


def _run_lines(runs: list[dict]) -> list[str]:
    """A line per stage per run that trained something (a continued run keeps the VAE it started from)."""
    lines = []
    for number, run in enumerate(runs, start=1):
        settings = run["settings"]
        vae, unet = run["vae"], run["unet"]
        continued = f", continued from `{settings['init_from']}`" if settings.get("init_from") else ""
        world = settings.get("world", "shapes")  # runs recorded before there were two worlds trained on v1
        scenes = run.get("pool_scenes", settings["pool_size"])  # runs recorded before toy pools: all of them
        lines.append(f"- Run {number}{continued}: {scenes} rendered scenes of the {world!r} world "
                     f"(seed {settings['seed']}).")
        if get_world(world).noisy_captions:
            rates = CaptionNoise.from_dict(settings.get("caption_noise", {})).to_dict()
            noise = ", ".join(f"{name} {value:g}" for name, value in rates.items())
            lines.append(f"  - Caption noise (diffx/embedded/captions.py): {noise}.")
        if settings.get("object_counts"):
            total = sum(settings["object_counts"])
            shares = ", ".join(f"{n} object{'s' * (n > 1)} {share / total:.0%}"
                               for n, share in enumerate(settings["object_counts"], start=1))
            lines.append(f"  - U-Net training draws by object count: {shares}.")
        if vae["final_loss"] is not None:
            lines.append(
                f"  - VAE: {vae['steps']} steps, batch {settings['vae_batch']}, {settings['vae_crop']}x"
                f"{settings['vae_crop']} crops, L1 with object pixels weighted x{settings['shape_pixel_weight']} "
                f"+ KL x{settings['vae_kl_weight']}; final loss {vae['final_loss']:.4f}; "
                f"{_time_words(vae)} on {vae['hardware']}.")
        if unet["final_loss"] is not None:
            flow = settings.get("family") == SD3_FAMILY
            lines.append(
                f"  - Text encoder + {'MMDiT' if flow else 'U-Net'}: {unet['steps']} steps, batch "
                f"{settings['unet_batch']}, AdamW lr {settings['unet_lr']} (warm-up, cosine), EMA "
                f"{settings['ema_decay']}, caption dropout {settings['caption_dropout']}"
                f"{_FLOW_WORDS if flow else _target_words(settings)}{_grounding_words(settings, unet)}; "
                f"final {'loss' if flow else 'L_simple'} {unet['final_loss']:.4f}; {_time_words(unet)} on "
                f"{unet['hardware']}.")
    return lines


def _time_words(stage: dict) -> str:
    """A stage's two clocks (`history.run_record`); a run recorded before there were two has its step time."""
    steps = stage.get("step_seconds", stage.get("seconds"))
    if "wall_seconds" not in stage:
        return f"{steps / 60:.1f} min in training steps"
    return (f"{steps / 60:.1f} min in training steps, {stage['wall_seconds'] / 60:.1f} min in all (with the pool, "
            "loss curves, preview pictures and checkpoints)")


_FLOW_WORDS = ", rectified flow (velocity target, logit-normal times)"


def _target_words(settings: dict) -> str:
    """What the run's U-Net learnt to predict (runs recorded without it predicted ε on SD's schedule)."""
    zero_snr = " on a zero-terminal-SNR schedule" if settings.get("zero_snr") else ""
    return f", target {settings.get('prediction_type', 'epsilon')}{zero_snr}"


def _grounding_words(settings: dict, unet: dict) -> str:
    if not settings.get("attention_loss"):
        return ""
    final = unet.get("final_grounding_loss")
    return (f", attention-grounding loss x{settings['attention_loss']} (diffx/embedded/grounding.py"
            + (f", final {final:.3f}" if final is not None else "") + ")")


def _architecture_lines(config: ModelConfig | SD3Config, parts: dict[str, int], size_mb: float) -> list[str]:
    """The card's architecture section: text encoder, denoiser (U-Net or MMDiT), VAE, weights and defaults."""
    flow = isinstance(config, SD3Config)
    text = config.clip_l if flow else config.text_encoder
    if flow:
        mmdit, side = config.mmdit, config.image_size // config.vae.downsample_factor
        denoiser = (f"- MMDiT (SD3's joint-attention transformer): {mmdit.depth} blocks, width {mmdit.width} "
                    f"({mmdit.heads} heads), {mmdit.patch_size}x{mmdit.patch_size} patches: "
                    f"{(side // mmdit.patch_size) ** 2} image tokens beside {config.clip_length} text tokens "
                    f"({parts['transformer'] / 1e6:.2f} M parameters)")
        target = (f"rectified flow, time shift {config.scheduler.shift:g}; the MMDiT predicts the velocity "
                  "ε − x0.")
    else:
        unet = config.unet
        denoiser = (f"- U-Net: channels {[unet.model_channels * m for m in unet.channel_mult]}, "
                    f"{unet.num_res_blocks} res-block per level, self- and cross-attention at levels "
                    f"{list(unet.attention_levels)} and the middle ({parts['unet'] / 1e6:.2f} M parameters)")
        scheduler = config.scheduler
        target = (f"{scheduler.beta_schedule} schedule"
                  f"{' rescaled to zero terminal SNR' if scheduler.rescale_betas_zero_snr else ''}, T = "
                  f"{scheduler.num_train_timesteps}, {scheduler.timestep_spacing} timestep spacing; the U-Net "
                  f"predicts {scheduler.prediction_type}.")
    return [
        f"- Text encoder: CLIP-style, {text.num_hidden_layers} layers, width {text.hidden_size}, real CLIP BPE "
        f"vocabulary ({parts['text_encoder'] / 1e6:.2f} M parameters)",
        denoiser,
        f"- VAE: AutoencoderKL f{config.vae.downsample_factor}, channels "
        f"{[config.vae.ch * m for m in config.vae.ch_mult]}, 4 latent channels, latent scaling factor "
        f"{config.vae.scaling_factor:.4f} ({parts['vae'] / 1e6:.2f} M parameters).",
        f"- Weights: {size_mb:.1f} MB (fp16 safetensors, original {'SD3' if flow else 'SD1.x'} key layout).",
        f"- Defaults: {config.default_sampler}, {config.default_steps} steps, guidance {config.default_guidance}, "
        f"{config.image_size}x{config.image_size} px, {target}",
    ]


def _opening_lines(config: ModelConfig | SD3Config, runs: list[dict]) -> list[str]:
    """What the model is: its world's words for a U-Net model; for a flow model, what it took over from the model
    it started from (whose runs, which trained those parts, open its history)."""
    world = get_world(runs[-1]["settings"].get("world", "shapes") if runs else "shapes")
    if not isinstance(config, SD3Config):
        return list(world.card)
    inherited = sum(1 for run in runs if run["settings"].get("family") != SD3_FAMILY)
    first_own = next((run for run in runs if run["settings"].get("family") == SD3_FAMILY), None)
    source = (first_own or {}).get("settings", {}).get("init_from") or "a U-Net model"
    lines = [f"# {config.name} — diffx's embedded flow model (SD3's architecture)", "",
             "An MMDiT (Stable Diffusion 3's joint-attention transformer) at toy size, trained with rectified flow",
             f"by `diffx train --family sd3` on the world of the model it started from ({source};",
             f"diffx/embedded/world.py, {config.image_size} px): the same scenes, loose captions and latents. Its VAE",
             "is that model's, kept frozen, so both draw into one latent space; its text encoder started from that",
             "model's and trained on."]
    if inherited:
        lines += [f"The history below therefore opens with the runs that trained those parts (runs 1-{inherited}, a",
                  "U-Net model's), before the flow model's own."]
    return lines


def write_model_card(folder: Path, model: AnyModel, runs: list[dict], scores: dict | None) -> Path:
    """MODEL_CARD.md: what the model is, how it was trained (every run), and how well it follows prompts."""
    parts = {name: sum(p.numel() for p in module.parameters()) for name, module in model.modules().items()}
    size_mb = sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 2**20
    lines = [
        *_opening_lines(model.config, runs),
        "",
        "## Architecture",
        *_architecture_lines(model.config, parts, size_mb),
        "",
        "## Training (resumable, seeded: `diffx train`; history in training.json)",
        "Captions are re-drawn each time a scene is used; caption dropout trains the unconditional",
        "prediction for classifier-free guidance.",
        *_run_lines(runs),
    ]
    flow = isinstance(model.config, SD3Config)
    # runs of this model's own network: a flow model's lineage begins with the U-Net model it took parts from
    if any(run["settings"].get("attention_loss") and (run["settings"].get("family") == "sd3") == flow for run in runs):
        attention = ("image→text quadrant of the joint attention" if flow else "cross-attention")
        lines += ["", f"The attention-grounding loss (TokenCompose, Wang et al. 2024) taught the {attention}",
                  "of each named object's colour and shape words (and the words of a grid cell the caption names",
                  "rightly) to fall inside that object: this model's attention maps point at objects because they",
                  "were trained to; plain Stable Diffusion training has no such objective."]
    if scores and scores.get("world") == "shapes2":
        lines += ["", *_world_lines(scores), *_tuning_lines(folder / TUNING_FILE)]
        save_png(guidance_plot(scores), folder / GUIDANCE_PLOT, force=True)
    elif scores:
        lines += ["", *_adherence_lines(scores)]
    path = folder / "MODEL_CARD.md"
    with atomic_output(path, force=True) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _adherence_lines(scores: dict) -> list[str]:
    """The card's adherence section from `benchmarks/embedded_quality.py --out` results."""
    default, unguided = scores["default"], scores["unguided"]
    reached = meets_targets(default, unguided)
    missed = [name for name, ok in reached.items() if not ok]
    lines = [
        "## Prompt adherence (judge: diffx/embedded/judge.py, `python -m benchmarks.embedded_quality`)",
        f"{default['n']} evaluation prompts (evaluation seed stream, never used for training or tuning), "
        f"{default['sampler']} {default['steps']} steps, prompt i at seed {default['seed']} + i.",
        "",
        f"| attribute | guidance {default['guidance']:g} | guidance 1 | target |",
        "|---|---|---|---|",
        *[f"| {' | '.join(row)} |" for row in summary_rows(default, unguided)],
        "",
        f"Pointing trials: {default['pointing_trials']} at guidance {default['guidance']:g}, "
        f"{unguided['pointing_trials']} at guidance 1. Last line: `{last_line(default)}`.",
        "",
        "All targets are met." if not missed else f"Targets not met: {', '.join(missed)}.",
    ]
    return lines


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    return [f"| {' | '.join(header)} |", "|" + "---|" * len(header), *[f"| {' | '.join(row)} |" for row in rows]]


def _world_lines(scores: dict) -> list[str]:
    """The card's adherence section of a v2 model from `world_quality.evaluate_world`'s result."""
    missed = [name for name, ok in world_targets(scores).items() if not ok]
    default = scores["guidance"]
    return [
        "## Prompt adherence (judge: diffx/embedded/world_judge.py, `python -m benchmarks.embedded_quality`)",
        f"{scores['n']} evaluation prompts (evaluation seed stream, never used for training or tuning), "
        f"{scores['sampler']} {scores['steps']} steps, guidance {default:g} (the model's default), prompt i at seed "
        f"{scores['seed']} + i.",
        "",
        *_table(("attribute", *GROUPS, "target"), adherence_rows(scores)),
        "",
        f"Pointing trials: {scores['pointing_trials']} (noun maps {_figure(scores['pointing_noun'])}, colour maps "
        f"{_figure(scores['pointing_colour'])}).",
        "",
        "## Guidance: fidelity against diversity (diffx/embedded/world_measures.py)",
        f"Diversity: {scores['diversity_seeds']} seeds of each of {scores['open_prompts']} under-specified prompts "
        "(\"a red circle\"), the normalised entropy of what they leave open (background kind and tint, position,",
        "size, fill) as the judge reads it. Saturation: the share of pixels more saturated (chroma) than any",
        "colour of the world.",
        "",
        *_table(("w", "all attributes", GROUPS[0], GROUPS[1], "diversity", "saturation"), curve_rows(scores)),
        "",
        *_table(("check", "figure"), check_rows(scores)),
        "",
        f"![adherence and diversity against w]({GUIDANCE_PLOT})",
        "",
        f"Last line: `{world_last_line(scores)}`.",
        "",
        "All targets are met." if not missed else f"Targets not met: {', '.join(missed)}.",
    ]


def _tuning_lines(path: Path) -> list[str]:
    """How the default guidance was chosen (`world_quality.tune_guidance`, kept in the folder), if it was."""
    if not path.is_file():
        return []
    tuning = json.loads(path.read_text(encoding="utf-8"))
    return ["", "## How the default guidance was chosen (`python -m benchmarks.tune_guidance`)",
            f"On {tuning['n']} validation prompts (the evaluation stream at prompt-set seed {tuning['seed']}, with any "
            "prompt also among the reported ones left out), \"all attributes\" peaked at w = "
            f"{tuning['chosen']:g} ({tuning['sampler']}, {tuning['steps']} steps); no reported figure was used:", "",
            *_table(("w", "all attributes (validation)"),
                    [(f"{w:g}", f"{rate:.3f}") for w, rate in zip(tuning["scales"], tuning["all"], strict=True)])]


def _figure(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def guidance_plot(scores: dict) -> Image.Image:
    """Adherence (by group) and diversity and saturation against w, from `evaluate_world`'s result."""
    from diffx.render.plots import plot_guidance_tradeoff  # matplotlib: slow to import, needed only here

    curve = scores["curve"]
    adherence = {group: [point["rates"][group].get("all", float("nan")) for point in curve] for group in GROUPS}
    return plot_guidance_tradeoff([point["guidance"] for point in curve], adherence,
                                  [point["diversity"] for point in curve], [point["saturation"] for point in curve],
                                  scores["guidance"], title=f"{scores['model']}: guidance against diversity")


def update_model_card(folder: str | Path, scores: dict) -> Path:
    """Rewrite a shipped model's MODEL_CARD.md from its weights, training.json and new adherence figures."""
    folder = Path(folder)
    return write_model_card(folder, load_model(folder), read_runs(folder), scores)
