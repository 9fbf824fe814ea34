"""Record a generation step by step and look inside: per-word attention, x̂0 and the guidance term.

    python examples/trace_attention.py "a yellow triangle above a green square" out/

Writes the trace GIF, the word × timestep attention grid, and prints where each word looks.
"""

import sys
from pathlib import Path

from diffx import views
from diffx.pipeline import GenerationSettings
from diffx.render import save_gif, save_png
from diffx.trace import generate_traced, save_trace
from diffx.weights import load_model


def main(prompt: str, out_dir: Path) -> dict[str, tuple[int, int]]:
    model = load_model()
    trace = generate_traced(model, GenerationSettings(prompt=prompt)).traces[0]
    save_gif(views.trace_frames(trace), out_dir / "trace.gif", force=True)
    save_png(views.attention_grid(trace), out_dir / "attention.png", force=True)
    save_trace(trace, out_dir / "trace.safetensors", force=True)
    # Where does each word look, averaged over the last half of the steps? (row, column) of the peak.
    last_half = range(trace.num_steps // 2, trace.num_steps)
    maps = sum(trace.word_maps(step) for step in last_half)  # (words, h, w)
    width = maps.shape[-1]
    return {word: divmod(int(maps[i].argmax()), width) for i, word in enumerate(trace.words)}


if __name__ == "__main__":
    for word, peak in main(sys.argv[1], Path(sys.argv[2])).items():
        print(f"{word:>10s} looks at (row, col) {peak}")
