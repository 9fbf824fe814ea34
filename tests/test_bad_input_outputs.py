"""Issues #13 and #31: every output option of every command, given bad paths (see test_bad_input.py).

Each output is given a file that exists (without --force), a path under a plain file, a folder, an empty name and
a suffix it cannot write; every command whose --out has companions (<out>_attention.png, …) is given an --out
whose companion exists; and every two outputs of one command are given one file, companions included
(`trace --out x.png --save-trace x.png`, `render --out r.png --convergence r.png`). Where the two cannot share a
name (an animation must be a .gif, a picture not), the case shows that the first check refuses it.
"""

from itertools import combinations

import pytest

from tests.bad_input import ANIMATIONS, BASES, FILES, OUTPUTS, Table, check_refused

# Each command's output options with the suffix of a file it may write, and the companions of its --out.
OUTPUT_SUFFIXES = {
    "noise": {"--out": ".png", "--gif": ".gif"},
    "denoise": {"--out": ".png", "--gif": ".gif"},
    "trace": {"--out": ".png", "--gif": ".gif", "--save-trace": ".safetensors", "--html": ".html"},
    "render": {"--out": ".png", "--gif": ".gif", "--convergence": ".png"},
    "attention": {"--out": ".png", "--save-trace": ".safetensors", "--html": ".html"},
    "edit": {"--out": ".png", "--gif": ".gif"},
    "weights": {"--out": ".png"},
    "invert": {"--out": ".png", "--gif": ".gif", "--save-latent": ".pt"},
    "cfg-sweep": {"--out": ".png", "--gif": ".gif", "--html": ".html"},
    "compare": {"--out": ".png"},
    "predict": {"--out": ".png"},
    "paths": {"--out": ".png"},
    "lab": {"--out": ".png", "--gif": ".gif"},
    "report": {"--html": ".html"},
    "lora": {"--out": ".png", "--attention": ".png"},
    "finetune": {"--out": ".safetensors"},
}
COMPANIONS = {"noise": ["schedules"], "denoise": ["steps"], "trace": ["attention"], "render": ["attention"],
              "attention": ["steps", "heads", "self"], "paths": ["convergence"], "lab": ["schedules", "guidance"]}
BAD_PATHS = {".png": OUTPUTS, ".gif": ANIMATIONS, ".html": FILES, ".safetensors": FILES,
             ".pt": ["existing.pt", "afile/o.pt", "afolder", "", "o.txt"]}


def _cases() -> Table:
    cases = Table()
    for command, outputs in OUTPUT_SUFFIXES.items():
        base = BASES.get(command, [command])
        for option, suffix in outputs.items():
            cases.add(base, option, BAD_PATHS[suffix])
        for companion in COMPANIONS.get(command, []):
            cases.add(base, "--out", [f"{companion}.png"])  # <companion>_<companion>.png exists
            for option in outputs:  # another output on a companion of --out (an animation cannot be a .png)
                if option not in ("--out", "--gif"):
                    cases.add(base, option, [f"d_{companion}.png"], "--out", "d.png")
        for first, second in combinations(outputs, 2):  # two outputs on one file, named as both may be
            name = "same.gif" if "--gif" in (first, second) else f"same{outputs[second]}"
            cases.add(base, second, [name], first, name)
    return cases


CASES = _cases()


@pytest.mark.parametrize("case", CASES, ids=[case.label for case in CASES])
def test_bad_output_is_refused_in_one_line(case, tmp_path, monkeypatch, tiny_model_dir, tiny_trace_file):
    check_refused(case, tmp_path, monkeypatch, tiny_model_dir, tiny_trace_file)
