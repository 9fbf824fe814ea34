"""Load a real Stable Diffusion v1.x checkpoint you brought (.ckpt, .safetensors or a diffusers folder).

    python examples/load_checkpoint.py ~/models/v1-5-pruned-emaonly.safetensors out/

Pickled .ckpt files are read by a restricted unpickler: no code in the file is ever run.
"""

import sys
from pathlib import Path

from diffx.devices import resolve_device
from diffx.pipeline import GenerationSettings, generate
from diffx.render import save_png
from diffx.weights import load_model


def main(checkpoint: str, out_dir: Path, steps: int = 25) -> Path:
    model = load_model(checkpoint, device=resolve_device("auto"))
    print(f"{model.config.name}: {model.num_parameters() / 1e6:.0f} M parameters from {model.source}")
    image = generate(model, GenerationSettings(prompt="a photograph of an astronaut riding a horse",
                                               steps=steps)).images[0]
    return save_png(image, out_dir / "checkpoint.png", force=True)


if __name__ == "__main__":
    print(main(sys.argv[1], Path(sys.argv[2])))
