"""The `diffx` command line (`diffx = "diffx.cli:app"`). Each command parses its options, calls the
documented Python API (`diffx.views`, `diffx.pipeline`, `diffx.weights`, …) and prints with rich.

Results go to stdout; progress, warnings and errors to stderr. A user error (`DiffxError`) prints one
line `error: …` and exits with code 2; `diffx --debug <command> …` shows the traceback instead. torch,
matplotlib and the models are imported inside the commands, so `diffx --help` answers at once.

- core.py: the app, its `--debug` option, errors and warnings, `command` (registration)
- options.py: the shared options, the option groups (model, sampling, input picture) and --threads
- progress.py: the per-step progress bar
- generate.py: denoise, trace, render · experiments.py: noise, cfg-sweep, compare
- info.py: tokens, models, report · lora.py: lora (a LoRA file inspected) · train.py: train
- finetune.py: finetune (a new word taught by LoRA or textual inversion)
- train_preview.py: train-preview (the tiny preview decoder)
- attention.py: attention (the explorer)
- trajectories.py: paths · lab.py: lab (the 2-D diffusion lab) · edit.py: edit, weights (editing attention)
- invert.py: invert (DDIM inversion) · predict.py: predict (ε̂, v̂ and x̂0 of one step)
- studio.py: studio (the live page) · tour.py: tour (the README's tour: every stop's command, then the index page)
"""

from diffx.cli import (
    attention,
    edit,
    experiments,
    finetune,
    generate,
    info,
    invert,
    lab,
    lora,
    predict,
    studio,
    tour,
    train,
    train_preview,
    trajectories,
)
from diffx.cli.core import app, command
from diffx.cli.options import with_threads

__all__ = ["app"]

# The commands, in the order `diffx --help` lists them; those that compute with torch take --threads
# (tokens and models only look things up).
for function in (tour.tour, experiments.noise, generate.denoise, generate.trace, generate.render, attention.attention,
                 edit.edit, edit.weights, invert.invert, experiments.cfg_sweep, experiments.compare, predict.predict,
                 trajectories.paths, lab.lab, info.tokens, info.models, lora.lora, finetune.finetune, train.train,
                 train_preview.train_preview, info.report, studio.studio):
    command(function if function in (info.tokens, info.models) else with_threads(function))
