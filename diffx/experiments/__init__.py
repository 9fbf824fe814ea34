"""Runs of the pipeline that draw what they find.

- sweeps.py: the forward process (`noise_views`), classifier-free guidance sweeps (`cfg_sweep`), comparisons over any
  two settings (`compare`); lora_axes.py: its `lora` and `lora-blocks` axes (the applied LoRAs, no reload);
  model_axis.py: its `model` axis (models side by side, each with its own defaults) and its cells, resolved
- prompt_to_prompt.py (+ its views): editing a prompt by injecting the source's attention (Hertz et al. 2022)
- round_trip.py: DDIM inversion's round trip, traced and drawn
- trajectories.py: how samplers travel (paths on the principal components, convergence)
"""

from diffx.experiments.prompt_to_prompt import Edit, prompt_to_prompt
from diffx.experiments.prompt_to_prompt_views import edit_frames, edit_picture, embedding_change, weights_view
from diffx.experiments.round_trip import inversion_frames, round_trip_figure, traced_round_trip
from diffx.experiments.sweeps import (
    CfgSweep,
    Comparison,
    NoiseViews,
    cfg_sweep,
    compare,
    default_noise_schedules,
    noise_views,
    parse_axis,
)
from diffx.experiments.trajectories import (
    SamplerPaths,
    convergence_chart,
    path_picture,
    sampler_paths,
    trace_convergence_chart,
)

__all__ = [
    "CfgSweep",
    "Comparison",
    "Edit",
    "NoiseViews",
    "SamplerPaths",
    "cfg_sweep",
    "compare",
    "default_noise_schedules",
    "convergence_chart",
    "edit_frames",
    "edit_picture",
    "embedding_change",
    "inversion_frames",
    "noise_views",
    "parse_axis",
    "path_picture",
    "prompt_to_prompt",
    "round_trip_figure",
    "sampler_paths",
    "trace_convergence_chart",
    "traced_round_trip",
    "weights_view",
]
