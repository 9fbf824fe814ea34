"""Pictures from tensors: latent previews, heatmaps, labelled grids, GIF/MP4/PNG files, plots.

Pure functions with no model code: they take tensors or arrays and return pictures or write files.
"""

from diffx.render.colormap import COLORMAPS, colorbar, heatmap, normalize_maps, overlay
from diffx.render.grid import caption_bar, fit_text, legend_bar, load_font, make_grid
from diffx.render.image import to_pil, upscale
from diffx.render.io import save_animation, save_gif, save_mp4, save_png
from diffx.render.latents import (
    SD15_LATENT_RGB_FACTORS,
    fit_latent_rgb_factors,
    fit_latent_rgb_mlp,
    latent_to_rgb_fast,
    visualize_noise,
)

__all__ = [
    "COLORMAPS",
    "SD15_LATENT_RGB_FACTORS",
    "caption_bar",
    "colorbar",
    "fit_latent_rgb_factors",
    "fit_latent_rgb_mlp",
    "fit_text",
    "heatmap",
    "latent_to_rgb_fast",
    "legend_bar",
    "load_font",
    "make_grid",
    "normalize_maps",
    "overlay",
    "plot_loss_curve",
    "plot_schedules",
    "save_animation",
    "save_gif",
    "save_mp4",
    "save_png",
    "to_pil",
    "upscale",
    "visualize_noise",
]


def __getattr__(name: str):
    """The plots need matplotlib (slow to import): load them only when asked for."""
    if name in ("plot_loss_curve", "plot_schedules"):
        from diffx.render import plots

        return getattr(plots, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
