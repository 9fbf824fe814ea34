"""Text → image with the Python API: load a model, generate a few seeds, save the pictures.

    python examples/text_to_image.py "a red circle left of a blue square" out/

Uses the embedded shapes-world-2 model unless DIFFX_MODEL (or --model in the CLI) points elsewhere.
"""

import sys
from pathlib import Path

from diffx.pipeline import GenerationSettings, generate
from diffx.render import save_png
from diffx.weights import load_model


def main(prompt: str, out_dir: Path) -> list[Path]:
    model = load_model()  # $DIFFX_MODEL, else the embedded model
    settings = GenerationSettings(prompt=prompt, sampler="ddim", steps=25, guidance=5.0)
    generation = generate(model, settings, seeds=[0, 1, 2])
    return [save_png(image, out_dir / f"seed{s.seed}.png", force=True)
            for image, s in zip(generation.images, generation.settings, strict=True)]


if __name__ == "__main__":
    for path in main(sys.argv[1], Path(sys.argv[2])):
        print(path)
