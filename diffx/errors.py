"""Errors a user can cause. Each message says what went wrong and how to fix it.

The CLI prints a `DiffxError` as one line on stderr and exits with code 2; anything else is a bug
and keeps its traceback.
"""

import math


class DiffxError(Exception):
    """Base class for every error caused by user input (bad option, bad file, missing model)."""


class InvalidArgumentError(DiffxError, ValueError):
    """An option value is out of range or not one of the allowed names."""


class ModelNotFoundError(DiffxError, FileNotFoundError):
    """No model was found where the user (or the search order) pointed."""


class CheckpointError(DiffxError):
    """A checkpoint file exists but cannot be used: wrong format, unsafe pickle, wrong keys or shapes."""


class InputImageError(DiffxError):
    """An input image or mask cannot be read or does not fit the requested size."""


class TraceFileError(DiffxError):
    """A trace file is missing or is not a diffx trace."""


class OutputPathError(DiffxError):
    """An output file already exists (and --force was not given) or cannot be written."""


def check_choice(kind: str, value: str, valid: "list[str] | tuple[str, ...]") -> str:
    """Return `value` if it is one of `valid`, else raise an error listing the valid names."""
    if value not in valid:
        raise InvalidArgumentError(f"unknown {kind} {value!r}; choose one of: {', '.join(valid)}")
    return value


def check_finite(name: str, value: float) -> float:
    """`value` if it is a finite number, else an error naming the option (NaN and ±inf draw garbage)."""
    if not math.isfinite(value):
        raise InvalidArgumentError(f"{name} must be a finite number, got {value}; give e.g. 7.5")
    return value


ERROR_LINE_CHARS = 300  # an `error: …` line never runs longer, whatever text of the user's it repeats
ELIDE_CHARS = 60  # a long text in a message or title is shown as its first and last this many characters


def elide(text: str, keep: int = ELIDE_CHARS) -> str:
    """`text` quoted, or for a long one its first and last `keep` characters and how many are left out."""
    if len(text) <= 2 * keep + 20:
        return repr(text)
    return f"{text[:keep]!r} … {text[-keep:]!r} ({len(text)} characters)"


def error_line(message: str, limit: int = ERROR_LINE_CHARS - len("error: ")) -> str:
    """`message` on one line of at most `limit` characters: a longer one keeps its start (what went wrong) and its
    end (the fix), and says how much of the middle — usually text the user gave — is left out."""
    message = " ".join(message.split())
    if len(message) <= limit:
        return message
    tail = limit // 3
    middle = f" … ({len(message)} characters, the middle left out) … "
    return message[:limit - tail - len(middle)] + middle + message[-tail:]
