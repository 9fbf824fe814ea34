"""Pictures of a trace: what happened at every step, drawn from what the tracer recorded.

- steps.py: x_t, x̂0 and attention per step (frames, grids, the latent preview, timestep labels)
- attention.py: the attention explorer (per layer, head, step; self-attention)
- prediction.py: the ε / v / x̂0 lesson (one step's predictions side by side)
- tables.py: token and model tables (terminal and HTML)
- lora.py: a LoRA file's report (`weights.lora_inspect`) as terminal tables and as a bar chart
"""

from diffx.views.attention import (
    explorer_options,
    head_grid,
    layer_grid,
    mass_shares,
    self_attention_view,
    steps_grid,
    write_attention_views,
)
from diffx.views.prediction import prediction_view
from diffx.views.steps import (
    PREVIEWS,
    TRACE_RECORD_STEPS,
    attention_grid,
    denoise_frames,
    denoise_grid,
    format_timestep,
    latent_preview,
    resolve_preview,
    step_indices,
    trace_frames,
    write_trace_views,
)
from diffx.views.tables import models_table, tokens_table, word_rows

__all__ = [
    "PREVIEWS",
    "TRACE_RECORD_STEPS",
    "attention_grid",
    "denoise_frames",
    "denoise_grid",
    "explorer_options",
    "format_timestep",
    "head_grid",
    "latent_preview",
    "layer_grid",
    "mass_shares",
    "models_table",
    "prediction_view",
    "resolve_preview",
    "self_attention_view",
    "step_indices",
    "steps_grid",
    "tokens_table",
    "trace_frames",
    "word_rows",
    "write_attention_views",
    "write_trace_views",
]
