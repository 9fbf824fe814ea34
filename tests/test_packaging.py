"""A non-editable install works with no checkout: the wheel and the sdist carry the CLIP vocabulary and the
embedded model (the repository's data/, shipped as the package diffx._data), and the installed `diffx` runs
from a directory outside the checkout.

The wheel is built once from a copy of the sources (so the checkout gets no build/ folder), installed with
`--no-deps` into a fresh venv that sees the running interpreter's packages (CPU torch from the local wheel, numpy,
…: a .pth file lists its site-packages, so this works whether the tests run in a plain Python or in a venv, where
`--system-site-packages` would show the *base* interpreter's packages instead), and its `diffx` and
`python -m diffx` run from a temporary directory.
"""

import ast
import importlib.metadata
import importlib.util
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
# the default embedded model may weigh 40 MB (issue #14), the flow model 25 MB (issue #36); vocabulary and code ~2 MB
MAX_WHEEL_MB = 67
MODEL_FILES = ["config.json", "model.safetensors", "MODEL_CARD.md", "guidance_curve.png", "guidance_tuning.json",
               "training.json", "tiny_decoder.safetensors"]
SHIPPED = ["bpe_simple_vocab_16e6.txt.gz", "BPE_VOCAB_LICENSE.txt",
           *(f"{model}/{name}" for model in ("shapes-world-2", "shapes-world-flow") for name in MODEL_FILES)]


def run(*args, cwd=None, env=None, timeout=600) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """The files a build reads, copied out of the checkout."""
    copy = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy2(ROOT / name, copy / name)
    shutil.copytree(ROOT / "diffx", copy / "diffx", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in SHIPPED:
        (copy / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / "data" / name, copy / "data" / name)
    return copy


@pytest.fixture(scope="module")
def wheel(source, tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    # Offline when setuptools is here (it is a dependency of the build); otherwise pip fetches it from PyPI.
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, source, "-w", dist)
    (found,) = dist.glob("diffx-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed (its own copy of diffx, whatever this machine has installed)."""
    env_dir = tmp_path_factory.mktemp("venv")
    run(sys.executable, "-m", "venv", env_dir)
    python = env_dir / ("Scripts" if os.name == "nt" else "bin") / "python"
    # The running interpreter's packages, venv or not (a line of a .pth file is a path added to sys.path).
    ours = dict.fromkeys([*site.getsitepackages(), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    purelib = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    (Path(purelib) / "machine_packages.pth").write_text("".join(f"{path}\n" for path in ours))
    run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", wheel)
    return env_dir


def outside_env() -> dict:
    """The environment of a user outside the checkout: no model chosen, nothing on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("DIFFX_MODEL", "PYTHONPATH")}
    env["COLUMNS"] = "120"
    return env


def test_wheel_carries_the_data_and_stays_small(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"diffx/_data/{name}" for name in SHIPPED} <= names
    assert "diffx/report/template.html" in names and "diffx/__main__.py" in names
    assert not any(name.startswith(("data/", "tests/")) for name in names)
    size_mb = wheel.stat().st_size / 1e6
    print(f"wheel {wheel.name}: {size_mb:.1f} MB, {len(names)} files")
    assert size_mb <= MAX_WHEEL_MB


def test_every_file_in_data_is_packaged():
    """pyproject's package data and MANIFEST.in list data/ file by file, so a file added to data/ (a model's
    guidance plot, say) would be missing from wheels and sdists unless listed: both lists must be data/."""
    present = {p.relative_to(ROOT / "data").as_posix() for p in (ROOT / "data").rglob("*") if p.is_file()}
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
                 ["diffx._data"])
    manifest = {name.removeprefix("data/") for line in (ROOT / "MANIFEST.in").read_text().splitlines()
                if line.startswith("include ") for name in line.split()[1:] if name.startswith("data/")}
    assert listed == present and manifest == present and set(SHIPPED) == present


def test_every_imported_package_is_a_dependency(wheel):
    """The venv below sees this machine's packages, so an import of an undeclared one would pass there and
    fail on a fresh machine (as `import click` did under pipx): every third-party module that diffx/ imports
    belongs to a distribution its wheel requires."""
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    requires = {canonical(re.split(r"[\s;<>=!~\[(]", line.split(":", 1)[1].strip())[0])
                for line in metadata.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line}
    owners = importlib.metadata.packages_distributions()
    imported = set()
    for path in (ROOT / "diffx").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"diffx", "__future__"}
    undeclared = sorted(f"{name} ({', '.join(owners.get(name, ['?']))})" for name in third_party
                        if not {canonical(d) for d in owners.get(name, [])} & requires)
    assert not undeclared, f"imported but not in [project] dependencies: {undeclared}"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_sdist_carries_the_data(source, tmp_path):
    script = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    pytest.importorskip("setuptools")
    name = run(sys.executable, "-c", script, tmp_path, cwd=source).stdout.split()[-1]
    with tarfile.open(tmp_path / name) as sdist:
        members = {member.split("/", 1)[1] for member in sdist.getnames() if "/" in member}
    assert {f"data/{name}" for name in SHIPPED} | {"setup.py", "diffx/report/template.html"} <= members


def test_installed_diffx_runs_outside_the_checkout(venv, tmp_path):
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    env = outside_env()
    where = run(bin_dir / "python", "-c", "import diffx, diffx.paths as p; print(diffx.__file__); print(p.DATA_DIR)",
                cwd=tmp_path, env=env).stdout.split("\n")
    assert Path(where[0]).resolve().is_relative_to(venv.resolve()), where
    assert Path(where[1]).name == "_data" and Path(where[1]).resolve().is_relative_to(venv.resolve()), where

    assert run(bin_dir / "diffx", "--version", cwd=tmp_path, env=env).stdout.strip().startswith("diffx ")
    tokens = run(bin_dir / "diffx", "tokens", "a red circle left of a blue square", cwd=tmp_path, env=env).stdout
    assert "circle" in tokens and "square" in tokens
    run(bin_dir / "diffx", "trace", "--prompt", "a red circle", "--steps", "3", "--gif", "trace.gif",
        cwd=tmp_path, env=env)
    assert (tmp_path / "trace.gif").stat().st_size > 0 and (tmp_path / "trace.png").is_file()
    run(bin_dir / "diffx", "trace", "--model", "shapes-world-flow", "--prompt", "a red circle", "--steps", "3",
        "--gif", "flow.gif", cwd=tmp_path, env=env)  # the second embedded model, from the wheel too
    assert (tmp_path / "flow.gif").stat().st_size > 0
    models = run(bin_dir / "python", "-m", "diffx", "models", cwd=tmp_path, env=env).stdout
    assert "shapes-world-2" in models and "shapes-world-flow" in models
