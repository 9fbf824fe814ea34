"""A diffx folder's config.json, checked against `ModelConfig`'s fields and their types before anything is built
(an SD3-family folder's, marked `"family": "sd3"`, against `SD3Config`'s).

A hand-edited or damaged config (`{}`, a list, a string where a number belongs, a field diffx does not know) is one
`CheckpointError` naming the file, the field and what it should hold — never a `TypeError` from deep inside a
constructor.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any

from diffx.errors import CheckpointError, elide
from diffx.models.any_model import FAMILY_KEY, AnyConfig, config_from_dict, is_sd3_config
from diffx.models.configs import ModelConfig
from diffx.models.sd3 import SD3Config
from diffx.weights.discovery import read_json


def _kind(annotation: Any) -> str:
    """The annotation in words, for the error message (JSON lists stand for tuples)."""
    if typing.get_origin(annotation) is None:
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("NoneType", "null").replace("tuple", "a list of ")


def _fits(value: Any, annotation: Any) -> bool:
    """Whether a JSON value is one `annotation` allows (ints for floats; lists for tuples; no bool for numbers)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if annotation is str:
        return isinstance(value, str)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(item, args[0]) for item in value)
        return len(value) == len(args) and all(_fits(item, arg) for item, arg in zip(value, args, strict=True))
    return False


def _check(where: str, data: Any, cls: type) -> None:
    """Every field of the dataclass `cls` in `data` (a JSON object) has the type it declares; required ones exist."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{where} is {type(data).__name__}, not an object of {cls.__name__}'s fields")
    hints = typing.get_type_hints(cls)
    fields = {field.name: field for field in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise CheckpointError(f"{where} has fields diffx does not know: {elide(', '.join(unknown), 40)}")
    for name, field in fields.items():
        if name not in data:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise CheckpointError(f"{where} lacks {name!r}")
            continue
        annotation, value = hints[name], data[name]
        if dataclasses.is_dataclass(annotation) or (
                typing.get_origin(annotation) in (typing.Union, types.UnionType)
                and any(dataclasses.is_dataclass(arg) for arg in typing.get_args(annotation))):
            nested = next(arg for arg in (annotation, *typing.get_args(annotation)) if dataclasses.is_dataclass(arg))
            if value is not None or annotation is nested:
                _check(f"{where}.{name}", value, nested)
            continue
        if not _fits(value, annotation):
            shown = json.dumps(value)
            shown = shown if len(shown) <= 40 else shown[:40] + " …"
            raise CheckpointError(f"{where}.{name} is {shown}; it must be {_kind(annotation)}")


def read_model_config(path: Path) -> ModelConfig:
    """The `ModelConfig` of a diffx folder's config.json (`path`), every field's type checked first."""
    data = read_json(path)
    _check(str(path), data, ModelConfig)
    return ModelConfig.from_dict(data)


def read_any_model_config(path: Path) -> AnyConfig:
    """The configuration of a diffx folder's config.json (`path`) of either family (`diffx.models.any_model`), every
    field's type checked first."""
    data = read_json(path)
    if not (isinstance(data, dict) and is_sd3_config(data)):
        return read_model_config(path)
    _check(str(path), {key: value for key, value in data.items() if key != FAMILY_KEY}, SD3Config)
    return config_from_dict(data)
