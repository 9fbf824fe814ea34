"""Where diffx finds its shipped data (the CLIP vocabulary and the two embedded models).

In a source checkout (or an editable install) that is the repository's top-level `data/` folder. An
installed wheel carries the same files inside the package, as `diffx/_data/` (setup.py maps `data/` to
the package `diffx._data`), so `pip install .`, `pipx install .` and a wheel work with no checkout.
"""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
VOCAB_NAME = "bpe_simple_vocab_16e6.txt.gz"
INSTALLED_DATA_DIR = PACKAGE_DIR / "_data"  # a wheel or `pip install .`
CHECKOUT_DATA_DIR = PACKAGE_DIR.parent / "data"  # the repository (source checkout, editable install)


def _data_dir() -> Path:
    """The installed copy when there is one, else the checkout's data/ (never a stray site-packages/data)."""
    if (INSTALLED_DATA_DIR / VOCAB_NAME).is_file():
        return INSTALLED_DATA_DIR
    return CHECKOUT_DATA_DIR


DATA_DIR = _data_dir()
BPE_VOCAB_FILE = DATA_DIR / VOCAB_NAME
EMBEDDED_MODEL_DIR = DATA_DIR / "shapes-world-2"  # the default model: a U-Net trained on a diffusion schedule
FLOW_MODEL_DIR = DATA_DIR / "shapes-world-flow"  # the same world learnt by an MMDiT with rectified flow (SD3's kind)
