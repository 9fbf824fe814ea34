"""The one thing pyproject.toml cannot say: the repository's top-level data/ folder (the CLIP vocabulary and
the embedded model) goes into the wheel as the package `diffx._data`, found by `diffx/paths.py`. Everything
else about the build is in pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["diffx", "diffx.*"]) + ["diffx._data"],
    package_dir={"diffx._data": "data"},
)
