"""The stops of the guided tour: for each concept its command, the files it writes and what to notice in them.

This is the one place for the tour's captions. README.md's tour shows each caption verbatim under the stop's bold
title, examples/tour.ipynb shows each stop's `concept` (the caption's opening, true at any settings; the notebook
runs fewer steps), and `diffx tour` writes them on its index page beside the pictures; tests/test_tour.py checks
that the three agree. The captions describe the pictures of the embedded model at the tour's full settings.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from diffx.errors import OutputPathError
from diffx.files import check_outputs

INDEX_NAME = "index.html"  # the tour's page, next to its pictures


class InTour(str):
    """A command-line argument that names a file in the tour folder (an input an earlier stop wrote, or an output)."""


@dataclass(frozen=True)
class TourFile:
    """One file a stop writes into the tour folder and what it shows (where the README shows the file: its alt
    text there)."""

    name: str
    label: str


@dataclass(frozen=True)
class Stop:
    """One concept of the tour: the `diffx` command that makes its pictures and what to notice in them.

    `args` is the command line after `diffx`, file names relative to the tour folder (`InTour`); `quick` gives
    option values that replace (or join) the full tour's under `diffx tour --quick`. A stop with no command of its
    own shows files that the stop named `made_by` wrote.
    """

    name: str  # the page's anchor
    title: str  # the bold words that open the README's paragraph
    caption: tuple[str, ...]  # the README's paragraphs, verbatim (up to line breaks)
    files: tuple[TourFile, ...]  # what the page shows for this stop, every file its command writes
    args: tuple[str, ...] = ()
    quick: tuple[tuple[str, str], ...] = ()
    concept: str = ""  # the caption's opening that examples/tour.ipynb shows too ("" = not in the notebook)
    made_by: str = ""

    def arguments(self, quick: bool = False) -> tuple[str, ...]:
        """The command line after `diffx`; with `quick`, each `quick` option's value in place of the full one's
        (an option the full command leaves at its default is added)."""
        args = list(self.args)
        for option, value in self.quick if quick else ():
            if option in args:
                args[args.index(option) + 1] = value
            else:
                args += [option, value]
        return tuple(args)

    def argv(self, folder: Path, quick: bool = False) -> list[str]:
        """The arguments to run, the tour's files inside `folder`."""
        return [str(folder / arg) if isinstance(arg, InTour) else arg for arg in self.arguments(quick)]

    def command_line(self, quick: bool = False, extra: Sequence[str] = ()) -> str:
        """`diffx …` as a learner types it in the tour folder, quoted as the README quotes (double quotes)."""
        return " ".join(["diffx", *(shell_quote(arg) for arg in (*self.arguments(quick), *extra))])


def shell_quote(arg: str) -> str:
    """`arg` for a POSIX shell: bare when it is plain, in double quotes when it holds nothing a shell expands
    there, else in single quotes."""
    if re.fullmatch(r"[\w@%+=:,./-]+", arg):
        return arg
    if not re.search(r'["$`\\!]', arg):
        return f'"{arg}"'
    return "'" + arg.replace("'", "'\\''") + "'"


HEART = "a yellow heart above a blue circle"  # the quick start's prompt, traced at seed 3

STOPS: tuple[Stop, ...] = (
    Stop(
        "trace", "Tracing one generation",
        ('Each panel says what it shows: on this model x̂0 is the real VAE decode (`--preview auto` decodes '
         'whenever the decoder is cheap; on SD1.5 it switches to the fast latent preview and the panels say '
         '"latent preview"; every command that draws x̂0, the HTML pages included, takes `--preview auto|fast|tiny|vae`'
         ' with that one rule), and x_t is drawn as the mixture it is, √ᾱ x̂0 + √(1 − ᾱ) ε̂, so you can watch the '
         "picture come out of the noise. x_t is the sampler's state, each step's input: at the last step it is "
         "still visibly noisy, and the result is that step's x̂0 (the GIF's frames say so).",),
        (TourFile("trace.gif", f'trace of "{HEART}"'), TourFile("trace.png", "the result"),
         TourFile("trace.safetensors", "the trace itself, every step's tensors: `diffx render` and `diffx report` "
                                       "read it")),
        ("trace", "--prompt", HEART, "--seed", "3", "--gif", InTour("trace.gif"), "--save-trace",
         InTour("trace.safetensors")),
        quick=(("--steps", "3"),)),
    Stop(
        "noise", "The forward process",
        ('q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I) (DDPM eq. 4) for the three β schedules, and the schedules '
         "themselves with the timesteps DDIM visits. Both follow the model's scheduler, read from its config alone"
         ' (no weights): on the embedded model every schedule is rescaled to zero terminal SNR, so x_999 is pure '
         'noise, and DDIM visits t = 999, 959 … 39 (trailing spacing), the timesteps `diffx denoise` runs. The '
         'first column is x_0 itself; note that `t=0` is already one noising step, and that the cosine schedule '
         'keeps the picture visible much longer (t = 500) than the linear one:',),
        (TourFile("noise.png", "forward process"), TourFile("noise_schedules.png", "schedules"),
         TourFile("noise.gif", "x_t under each schedule, from t = 0 to t = 999")),
        ("noise", InTour("trace.png"), "--out", InTour("noise.png"), "--gif", InTour("noise.gif"), "--sampler",
         "ddim", "--steps", "25"),
        concept="q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I) (DDPM eq. 4) for the three β schedules, and the schedules "
                "themselves with the timesteps DDIM visits."),
    Stop(
        "denoise", "The reverse process",
        ("x_t and the model's guess of the final image x̂0 at every step. Notice that x̂0 at t = 999 is a guess that "
         "fits any prompt (a checkered background, cyan blobs) and settles on the layout by t = 719, long before "
         "x_t looks like anything. It draws two stars: its training captions leave out each further object a "
         "quarter of the time, so \"a yellow star\" does not say there is only one:",),
        (TourFile("denoise_steps.png", "denoising"), TourFile("denoise.png", "the result"),
         TourFile("denoise.gif", "x_t and x̂0 at every step")),
        ("denoise", "--prompt", "a yellow star on a pale purple background", "--out", InTour("denoise.png"),
         "--gif", InTour("denoise.gif")),
        quick=(("--steps", "3"),),
        concept="x_t and the model's guess of the final image x̂0 at every step."),
    Stop(
        "cfg-sweep", "Classifier-free guidance",
        ("ε̂ = ε_u + w (ε_c − ε_u): the same seed at several w, with x̂0 (VAE decode) at steps 5, 10 and 20 below "
         "each result. The embedded model was trained on loose captions, as SD was, so guidance does here what it "
         "does there (measured over 300 prompts in [The embedded model](#the-embedded-model): every attribute right "
         "0.29 at w = 1, 0.40 at its default w = 3, 0.27 at 15; the diversity of what a prompt leaves open falls "
         "all the way). In this sweep, at w = 1 the model fills what the prompt leaves open freely (a checkered "
         "background); from w = 2 the background is plain; past the default the square grows a lime corner and a "
         "grey patch, and its x̂0 at steps 5 and 10 shows stripes and colours nobody asked for — over-guidance, as "
         "SD's pictures over-saturate at w = 15–20:",),
        (TourFile("cfg_sweep.png", "cfg sweep"),),
        ("cfg-sweep", "--prompt", "a large green square in the top left", "--scales", "1,2,3,5,7.5,10,15",
         "--rows-steps", "5,10,20", "--out", InTour("cfg_sweep.png")),
        quick=(("--scales", "1,3,7.5"), ("--rows-steps", "1,2,3"), ("--steps", "3")),
        concept="ε̂ = ε_u + w (ε_c − ε_u): the same seed at several w, with x̂0 (VAE decode) at steps 5, 10 and 20 "
                "below each result."),
    Stop(
        "compare", "Samplers and step counts",
        ('(any two of sampler, steps, schedule, guidance, seed, karras, spacing); each cell is labelled with its '
         'number of U-Net evaluations, counted as they run — Heun calls the model twice per step (2N − 1 calls), '
         'and guidance (w ≠ 1) runs the U-Net twice per call, with the prompt and without — the cost that compares'
         ' across machines. Notice Heun: on this zero-terminal-SNR schedule the first step starts at σ ≈ 4,100 '
         "(the schedule's top, clipped), and its trapezoid correction over so long a step overshoots — at 3 and 6 "
         'steps the pictures break, at 12 and 25 they are other pictures (`diffx paths` below measures why), while'
         ' DDIM, Euler and DPM++ 2M at 3 steps are already close to their 25-step picture:',),
        (TourFile("compare.png", "compare"),),
        ("compare", "--x", "sampler=ddim,euler,euler_a,dpmpp_2m,heun", "--y", "steps=3,6,12,25", "--prompt",
         "an orange triangle above a cyan circle", "--out", InTour("compare.png")),
        quick=(("--y", "steps=2,3"), ("--x", "sampler=ddim,euler_a,heun")),
        concept="(any two of sampler, steps, schedule, guidance, seed, karras, spacing); each cell is labelled with "
                "its number of U-Net evaluations, counted as they run"),
    Stop(
        "two-models", "Two models, one world",
        ("(`--x model=…`: models side by side, named as `--model` takes them, each with its own sampler, steps, "
         "guidance and schedule unless given): shapes-world-2, a U-Net trained on a diffusion schedule, beside "
         "shapes-world-flow, SD3's MMDiT trained with rectified flow on the same world and latents. Each cell "
         "counts its own network's evaluations. Notice that the flow model, trained for 3.4 hours against v2's ten "
         "hours, draws the star where it is asked, in its colour and with its stripes, but smaller and with a "
         "rougher outline:",),
        (TourFile("two_models.png", "the two embedded models side by side at 4, 8 and 25 steps"),),
        ("compare", "--x", "model=shapes-world-2,shapes-world-flow", "--y", "steps=4,8,25", "--prompt",
         "a purple striped star in the center on a pale green background", "--seed", "3",
         "--out", InTour("two_models.png")),
        quick=(("--y", "steps=2,4"),)),
    Stop(
        "paths", "How samplers travel",
        ('(`diffx paths`): every sampler from the same x_T, the state x_t recorded at each step and projected on '
         'the first two principal components of all the paths, with the distances that measure convergence against'
         ' model evaluations (Karras et al. 2022, fig. 2; Lu et al. 2022): to a 200-step DPM++ 2M reference solve,'
         " how far x̂0 still moves, the step length, and the result's error per step count. Notice that DDIM, "
         'Euler and DPM++ 2M share one path — they solve the same probability-flow ODE — and their 25-step results'
         ' end 0.035, 0.028 and 0.013 from the reference (RMS, latent units), while Euler a, which adds fresh '
         'noise at every step, wanders off and ends at another picture (1.03). Heun solves the same ODE yet ends '
         '0.44 away, with a dotted heart (16.7 at 5 steps, 1.4 at 10): its first step runs from σ = 4,096 (t = '
         '999, the clipped top of the zero-terminal-SNR schedule) to σ = 52 (t = 959), and its trapezoid rule '
         'averages the slopes at the two ends as if the slope changed evenly along the step, when it changes '
         'almost all near σ = 52 — so the correction is about σ₀/2σ₁ ≈ 40 times the change of x̂0 between its two '
         "evaluations. After that one step its state is 0.029 from the reference's at t = 959, the others' 0.0003."
         " diffusers' HeunDiscreteScheduler takes the very same steps (`tests/sampling/test_samplers.py`), and "
         'with that first step taken as plain Euler the same Heun ends 0.013 away at 25 steps. DPM++ 2M reaches a '
         'given error in the fewest evaluations; Heun pays two per step:',),
        (TourFile("paths.png", "latent paths"),
         TourFile("paths_convergence.png", "convergence against model evaluations")),
        ("paths", "--prompt", HEART, "--seed", "3", "--samplers", "ddim,euler,euler_a,heun,dpmpp_2m", "--steps",
         "5,10,25", "--out", InTour("paths.png")),
        quick=(("--steps", "2,3"), ("--reference", "dpmpp_2m:6")),
        concept="(`diffx paths`): every sampler from the same x_T, the state x_t recorded at each step and projected "
                "on the first two principal components of all the paths, with the distances that measure "
                "convergence against model evaluations (Karras et al. 2022, fig. 2; Lu et al. 2022): to a 200-step "
                "DPM++ 2M reference solve, how far x̂0 still moves, the step length, and the result's error per "
                "step count."),
    Stop(
        "attention", "Cross-attention per word",
        ("(DAAM: heads averaged, layers upsampled and averaged), word × timestep, as a viridis heatmap over the x̂0 "
         "picture in grey; by default each word's map is scaled to its own maximum (`--attn-scale shared` puts all "
         "words on one scale, so brightness compares). Notice that at t = 879 x̂0 still shows two hearts, and "
         "\"yellow\" and \"heart\" already sit on the upper one; by t = 719 the lower heart has become the circle, "
         "where \"blue\" and \"circle\" attend. The embedded model was trained with an attention-grounding loss, so "
         "its colour and shape words point at their objects more sharply than plain SD training would make them "
         "(see its model card):",),
        (TourFile("trace_attention.png", "attention"),),
        made_by="trace",
        concept="(DAAM: heads averaged, layers upsampled and averaged), word × timestep, as a viridis heatmap over the "
                "x̂0 picture in grey; by default each word's map is scaled to its own maximum (`--attn-scale shared` "
                "puts all words on one scale, so brightness compares)."),
    Stop(
        "attention-explorer", "The attention explorer: every layer, head and step",
        ("`diffx attention` records each cross-attention layer's map at its own grid (mean over heads; `--heads` "
         'keeps every head, 8× the size) and the self-attention of the 16×16 layers. The grid: the DAAM aggregate '
         "on top, then the U-Net's layers in the order they run, columns the start token, each word (a word of "
         'several BPE tokens = the mean of its tokens), the end token and the padding, each with its share of the '
         'attention mass. Notice where the mass goes — 65–99 % to the padding positions (89 % in the aggregate), '
         'words get a few percent — and that the 8×8 layers bind "yellow" and "heart" to the heart and "blue" and '
         '"circle" to the circle, the 4×4 ones only to the quarter of the picture it lies in, while the 16×16 ones'
         " are sharper and noisier. `<out>_steps.png` shows a `--layer` over the steps, each step's maps over that"
         " step's own x̂0 (at t = 999 the heart and the circle are not there yet), `<out>_heads.png` its heads, "
         '`<out>_self.png` where a `--pixel` looks and the first principal components of self-attention (prompt-'
         'to-prompt style):',),
        (TourFile("attention_layers.png", "attention per layer"),
         TourFile("attention_layers_steps.png", "the layer up.4 over the steps"),
         TourFile("attention_layers_heads.png", "the heads of up.4"),
         TourFile("attention_layers_self.png", "self-attention: where pixel (64, 30) looks, and the first principal "
                                               "components")),
        ("attention", "--prompt", HEART, "--seed", "3", "--heads", "--layer", "up.4", "--pixel", "64,30", "--out",
         InTour("attention_layers.png")),
        quick=(("--steps", "3"),)),
    Stop(
        "edit", "Editing attention: prompt-to-prompt",
        ("(Hertz et al. 2022): change a word, keep the picture. The edit runs with the source's seed and, for the "
         "first τ of the steps, with the source run's cross-attention maps (`--self-tau`: its self-attention too, "
         'in the layers of at most 16×16 queries). Left to right: the source, the edited prompt on its own (same '
         "seed), the edit with injection. On its own the green square comes out plain; with the source's attention"
         ' it keeps its dark dots, as in the source (mean change from the source over the square: 7.5 grey levels '
         "without injection, 5.0 with), while the circle takes the triangle's place either way (68 px across with "
         "injection, 72 without; the triangle was 66 wide). Adding words (refinement) keeps the shared words' maps"
         " and lets the new ones find their own; `--reweight red=2` scales a word's injected maps:",),
        (TourFile("edit.png", "prompt-to-prompt"),),
        ("edit", "--prompt", "a yellow triangle above a green square", "--to", "a yellow circle above a green square",
         "--seed", "1", "--tau", "0.8", "--self-tau", "0.8", "--out", InTour("edit.png")),
        quick=(("--steps", "3"),)),
    Stop(
        "weights", "Word weights",
        ("written as in the web UIs: `(word)` ×1.1, `((word))` ×1.21, `[word]` ÷1.1, `(word:1.5)`, `\\(` for a "
         "literal bracket; in every prompt, the negative one too. A weight multiplies the word's vectors in the text "
         "encoder's output, then the whole context is rescaled to its old mean (A1111's semantics); the chart shows "
         "how far each token's vector moved, the pictures the same seed without and with the weights — here "
         "\"star\" at 0.3 leaves a yellow dotted blob in the star's place:",),
        (TourFile("weights.png", "word weights"),),
        ("weights", "--prompt", "a yellow (star:0.3) on a pale blue background", "--seed", "0", "--out",
         InTour("weights.png")),
        quick=(("--steps", "3"),)),
    Stop(
        "invert", "DDIM inversion: find the noise of a picture",
        ("(Song et al. 2021, eq. 12 run backwards). `diffx invert` encodes the picture, climbs DDIM's grid from z_0 "
         "up to x_T with the prompt's guided ε̂, then samples back down from that x_T with the same prompt, steps "
         "and w. Top row: the input, the VAE decode of z_0, the x_T found, the picture DDIM draws from it and the "
         "error map. Below: the same trip at w = 1, 3 and 7.5 with their error maps, and the PSNR against steps per "
         "w. Notice that at w = 1 the trip comes back (34 dB, the error only on the stripes' edges) while with "
         "guidance the small error of each inverse step (it uses ε̂ at the level it starts from, not the one it "
         "lands on) is amplified until, at w = 7.5, heart and circle swap places and colours — the failure that "
         "null-text inversion (Mokady et al. 2023) was made to fix:",),
        (TourFile("invert.png", "DDIM inversion round trip"),
         TourFile("invert.gif", "the climb from z_0 to x_T: x_t and x̂0 at every inverse step")),
        ("invert", InTour("trace.png"), "--prompt", HEART, "--out", InTour("invert.png"), "--gif",
         InTour("invert.gif")),
        quick=(("--steps", "3"), ("--sweep-steps", "3"), ("--sweep-guidance", "1,7.5")),
        concept="(Song et al. 2021, eq. 12 run backwards). `diffx invert` encodes the picture, climbs DDIM's grid "
                "from z_0 up to x_T with the prompt's guided ε̂, then samples back down from that x_T with the same "
                "prompt, steps and w."),
    Stop(
        "report", "Everything at once, interactively",
        ("a self-contained HTML page with a step slider, the x_t / x̂0 / ε̂ / ε_c − ε_u panels, clickable words and "
         "the schedule with the current step marked:",),
        (TourFile("trace_report.html", "the trace of the first stop as the interactive page"),),
        ("report", InTour("trace.safetensors"), "--html", InTour("trace_report.html")),
        concept="a self-contained HTML page with a step slider, the x_t / x̂0 / ε̂ / ε_c − ε_u panels, clickable "
                "words and the schedule with the current step marked"),
    Stop(
        "lab", "The 2-D lab: diffusion you can see whole",
        ("`diffx lab` trains a tiny ε-model (an MLP told the timestep through the U-Net's sinusoidal embedding and"
         ' the class through an embedding with a null class) on 2-D points — two moons, a spiral, a 3×3 grid of '
         'Gaussians, or any picture as a density (`--data mask.png`, white = dense) — with the same '
         '`NoiseSchedule` and L_simple as the real training, in seconds on the CPU, and runs every sampler of '
         '`diffx.sampling` on it unchanged. Each GIF frame is one sampling step: the forward marginal q(x_t | x_0)'
         ' of the data (colour = moon), the learned score −ε̂/√(1−ᾱ_t) as arrows, and for each sampler 1000 '
         'particles from one x_T (blue) over q(x_t) at its own t (grey), with the paths of ten of them. Notice '
         'that the ODE samplers move their particles along smooth curves while the ancestral ones (DDPM, Euler a) '
         "wander, and end noisier at 25 steps; DDIM and Euler nearly coincide (DDIM is Euler's method on the "
         'probability-flow ODE, Song et al. 2021 §4.3), and so do DDPM and Euler a. DPM++ 2M walks its own grid, t'
         " = 951, 913 … 39 (diffusers' DPM-Solver++ spaces N + 1 points and drops the last), while the others step"
         ' on t = 961, 921 … 1: at step 13 its panel says t = 457 where theirs say 441, and the line under the '
         'frame says why:',
         "`--out` adds three figures. The forward process and the learned score over t (a full arrow is the "
         "panel's 90th-percentile |s|; far from the data at small t the model never saw a point, so its field "
         "there is arbitrary). Linear vs cosine β over step counts, each cell with its sliced Wasserstein distance "
         "SW₁ to the data (cosine is far better at 3–6 steps; at 25–50 steps linear is slightly ahead on this "
         "model). Classifier-free guidance over w: each class's spread shrinks from 1.54 (w = 0, unconditional) to "
         "1.16 (w = 1, the data's own) to 0.73 (w = 4), the fidelity/diversity trade; at w = 8 the samples are "
         "pushed off the ends of the moons:"),
        (TourFile("lab.gif", "lab: the reverse process of six samplers on the two moons"),
         TourFile("lab.png", "lab: forward process and learned score field"),
         TourFile("lab_schedules.png", "lab: linear vs cosine schedule over step counts"),
         TourFile("lab_guidance.png", "lab: classifier-free guidance over w")),
        ("lab", "--out", InTour("lab.png"), "--lessons", "classifier,variance"),
        quick=(("--train-steps", "30"), ("--steps", "3"), ("--particles", "200"), ("--guidance", "0,1,4"))),
    Stop(
        "lab-classifier", "Classifier guidance beside classifier-free guidance",
        ("`--lessons classifier` trains a noisy classifier f_φ(y | x_t, t) (the lab's MLP with one logit per moon, "
         "cross-entropy on q(x_t | x_0) at every t) and guides the ε-model's unconditional branch with its gradient, "
         "ε̄ = ε_∅ − √(1 − ᾱ_t) w ∇ log f_φ(y | x_t) (Dhariwal & Nichol 2021, §4). CFG is the same formula with an "
         "implicit classifier, ∇ log p(y | x_t) = −(ε_c − ε_∅)/√(1 − ᾱ_t), so `<out>_classifier.png` draws both "
         "gradient fields towards the upper moon per t on one arrow scale, with their mean cosine similarity over "
         "q(x_t)'s points, then the same x_T guided both ways over w. Notice that in the middle of the process the "
         "two fields are the same arrows (cos 0.99 at t = 300 and 600): there CFG's ε_c − ε_∅ is a classifier's "
         "gradient. Near the data they part (cos 0.60 at t = 25): the classifier is sure inside each moon, so its "
         "log-probability is flat there and its arrows vanish but between the moons, while CFG's difference of two "
         "scores, each as large as 1/√(1 − ᾱ_t), stays large everywhere. At t = 900 x_t has forgotten the class: "
         "both fields are tiny and point anywhere (cos 0.52). The samples agree up to w = 4 (class spread 0.966 and "
         "0.972 at w = 2, 0.731 and 0.748 at w = 4); at w = 8 CFG carries them off the ends of the moons (the spread "
         "grows again, 0.746) while the classifier's push, fading where it is sure, keeps them on (0.616):",),
        (TourFile("lab_classifier.png", "lab: classifier guidance beside classifier-free guidance"),),
        made_by="lab"),
    Stop(
        "lab-variance", "The learned reverse variance",
        ("`--lessons variance` trains an ε-model with two more outputs v by the hybrid loss L_simple + λ L_vlb "
         "(Nichol & Dhariwal 2021, eq. 15–16: λ = 0.001, the mean behind a stop-gradient, so L_vlb trains only "
         "Σ_θ = exp(v log β_t + (1 − v) log β̃_t)), then runs DDPM at 5, 10 and 25 steps with fixed_small (β̃), "
         "fixed_large (β) and the learned Σ_θ. A respaced step t → t' has its own β = 1 − ᾱ_t/ᾱ_t' and β̃, and v is "
         "carried over two ways: their log mapping, exp(v log β + (1 − v) log β̃) with the step's β and β̃ (log β̃ "
         "clipped at the last step, as they clip β̃_0), and a linear one, β̃ + r (β − β̃) with the r = (Σ_θ − β̃_t)/"
         "(β_t − β̃_t) of the 1000-step chain, since a step's exact variance is β̃ + r (β − β̃) with "
         "r = Var(x_0 | x_t)/(1 − ᾱ_t) at any spacing. Notice that near the data Σ_θ sits at β, not β̃ (r ≈ 0.8–1 "
         "for t < 100), and further on above β (r ≈ 1.5), where β̃_t ≈ β_t and the loss barely sees it: the exact r "
         "tends to the data's variance, 1.92 across and 0.65 up, which the learned one does not reach. At 10 steps "
         "both learned variances land closer to the data than either fixed one: SW₁ 0.162 fixed_small, 0.102 "
         "fixed_large, 0.099 learned (log), 0.094 learned (linear). At 5 steps the log mapping fails (0.552): on "
         "the step 201 → 1 β̃ is less than a thousandth of β, so a v a little above 1 becomes a variance several "
         "times β; the linear mapping stays best (0.153):",),
        (TourFile("lab_variance.png", "lab: the learned reverse variance against fixed ones"),),
        made_by="lab"),
    Stop(
        "lab-flow", "Flow matching in the lab: one ODE, two parameterisations",
        ("`diffx lab --objective both` also trains the same MLP, on the same data, seed and 750 steps, with the "
         "flow-matching loss of SD3 and Flux: x_t = (1 − t) x_0 + t ε, the network predicts the velocity v = ε − x_0 "
         "(told t · 1000), and flow Euler and Heun integrate dx/dt = v̂ from t = 1 down to 0 over SD3's shifted grid "
         "t → s·t/(1 + (s − 1)·t) (`--shift`, default 1). The GIF shows the flow's particles under diffusion's, from "
         "the same x_T, each over its own marginal: diffusion's cloud keeps its size (variance preserving), the "
         "flow's shrinks towards the middle and grows back out. At 25 steps flow Euler's SW₁ is 0.063 against DDIM's "
         "0.066 (flow Heun 0.059). Notice in the figure that DDIM's and flow Euler's paths from one x_T, drawn in the "
         "same units (the VP state divided by √ᾱ + √(1 − ᾱ) is (1 − t) x_0 + t ε), nearly coincide: Gaussian flow "
         "matching is diffusion with another schedule and parameterisation, and both sample one ODE. So they bend "
         "alike — path length over end-to-end distance 2.06 for DDIM, 2.16 for flow Euler — and flow matching alone "
         "does not straighten paths. The second row shows the equivalence: the flow model's ε̂ = x_t + (1 − t) v̂, "
         "run by diffx's own DDIM over the flow's grid (ᾱ = (1 − t)²/((1 − t)² + t²)), gives flow Euler's samples to "
         "6.8e-9 (float64). The last rows show that SD3's shift 3, made for 1024² pictures, costs these 2-D points "
         "at every step count (2 steps: SW₁ 0.61 against 0.40):",
         "`--reflow` adds one round of rectified flow's reflow (Liu et al. 2022): the flow carries 10 000 fresh "
         "noises to its samples (50 Euler steps) and the model trains again on those pairs. Lines between coupled "
         "pairs do not cross, so the paths straighten (length/chord 1.00) and one Euler step samples the moons: SW₁ "
         "0.062 at 1 step and 0.060 at 2, where the flow before reflow gives 0.825 (one step lands every particle near "
         "the data's mean) and 0.403:"),
        (TourFile("lab_flow.gif", "lab: diffusion's and flow matching's particles from one x_T"),
         TourFile("lab_flow.png", "lab: diffusion and flow paths, the flow model by DDIM, shift × steps"),
         TourFile("lab_flow_reflow.png", "lab: reflow straightens the paths, one step samples the data")),
        ("lab", "--objective", "both", "--reflow", "--gif", InTour("lab_flow.gif"), "--out", InTour("lab_flow.png")),
        quick=(("--train-steps", "30"), ("--steps", "3"), ("--particles", "200"))),
)


def tour_files(stops: Sequence[Stop] = STOPS) -> list[str]:
    """The names of every file the tour writes in its folder, the index page last."""
    return [file.name for stop in stops for file in stop.files] + [INDEX_NAME]


def check_tour_folder(folder: Path, force: bool = False, stops: Sequence[Stop] = STOPS) -> None:
    """Fail before any work when `folder` is a file, cannot be written, or already holds a file of the tour
    (without `force`): one line naming the problem and the fix."""
    if folder.exists() and not folder.is_dir():
        raise OutputPathError(f"the tour's folder {folder} is a file; give a folder name, e.g. diffx tour my-tour")
    names = tour_files(stops)
    existing = [name for name in names if (folder / name).exists()]
    if existing and not force:
        more = f" and {len(existing) - 1} more of the tour's files" if len(existing) > 1 else ""
        raise OutputPathError(f"{folder / existing[0]}{more} already exist; pass --force to overwrite them, or give "
                              "another folder")
    check_outputs([folder / name for name in names], force)  # a name taken by a folder, an unwritable folder
