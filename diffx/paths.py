"""Where diffx finds its shipped data (the CLIP vocabulary and the embedded model)."""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
DATA_DIR = PACKAGE_DIR.parent / "data"
BPE_VOCAB_FILE = DATA_DIR / "bpe_simple_vocab_16e6.txt.gz"
EMBEDDED_MODEL_DIR = DATA_DIR / "shapes-world"
