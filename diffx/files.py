"""Writing output files safely: the bottom layer every writer (pictures, traces, weights, training) uses.

Every output goes through `atomic_output`: the bytes are written to a temporary file in the target's
folder and renamed over the target only when writing succeeded, so a crash or an error never leaves a
half-written file behind, and an existing file is only replaced when the user passed --force.
`check_outputs` runs the same checks up front, before any work, for every file a command will write.
"""

import importlib.util
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from diffx.errors import InvalidArgumentError, OutputPathError, check_choice, elide

ANIMATION_SUFFIXES = (".gif", ".mp4")
PICTURE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}  # suffix → Pillow format


def _file_mode() -> int:
    """The permission bits a plain `open(path, "w")` would give (mkstemp makes private 0600 files)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _publish(tmp_path: Path, path: Path, force: bool) -> None:
    """Move the finished temporary file onto `path`. Without `force` this is an exclusive create (a hard link
    fails if `path` appeared meanwhile), so two writers racing for one name never overwrite each other; on a
    file system without hard links it falls back to a check and a rename."""
    if force:
        os.replace(tmp_path, path)
        return
    try:
        os.link(tmp_path, path)
    except FileExistsError:
        raise OutputPathError(f"output file {path} already exists; pass --force to overwrite it") from None
    except OSError:  # no hard links here (some network and FAT file systems)
        if path.exists():
            raise OutputPathError(f"output file {path} already exists; pass --force to overwrite it") from None
        os.replace(tmp_path, path)
        return
    tmp_path.unlink()


@contextmanager
def atomic_output(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it onto `path`, on error delete it.

    The temporary file keeps the target's suffix so writers that pick a format from the extension
    (PIL, imageio) behave the same. Raises `OutputPathError` if `path` exists and `force` is false,
    if its folder cannot be created or written, or if writing fails with an OSError.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"output path {path} is a folder; give a file name")
    if path.exists() and not force:
        raise OutputPathError(f"output file {path} already exists; pass --force to overwrite it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    except OSError as err:
        raise OutputPathError(
            f"cannot write to folder {path.parent} ({err.strerror}); choose a writable output path"
        ) from None
    os.close(fd)
    tmp_path = Path(tmp_name)
    try:
        yield tmp_path
        os.chmod(tmp_path, _file_mode())
        _publish(tmp_path, path, force)
    except BaseException as err:
        tmp_path.unlink(missing_ok=True)
        if isinstance(err, OSError):  # disk full, file system gone read-only, ...
            reason = err.strerror or err
            raise OutputPathError(f"cannot write {path} ({reason}); check the output folder") from err
        raise


def write_atomic(path: str | os.PathLike, write_fn: Callable[[Path], None], force: bool = False) -> Path:
    """Call `write_fn(tmp_path)` and move the result to `path` atomically (see `atomic_output`)."""
    with atomic_output(path, force) as tmp_path:
        write_fn(tmp_path)
    return Path(path)


def named_file(path: str | os.PathLike) -> Path:
    """`path` as a Path, if it ends in a file name (not empty, not "."), else an error asking for one."""
    path = Path(path)
    if path.name in ("", "."):
        raise OutputPathError(f"output path {str(path)!r} has no file name; give one like out.png")
    return path


def companion_path(path: str | os.PathLike, name: str) -> Path:
    """A file next to `path` named after it: companion_path("out.gif", "attention") = out_attention.png."""
    path = named_file(path)
    return path.with_name(f"{path.stem}_{name}.png")


def animation_format(path: str | os.PathLike) -> str:
    """The animation format of a file name: ".gif" or ".mp4" (anything else is an error)."""
    return check_choice("animation format", Path(path).suffix.lower(), ANIMATION_SUFFIXES)


def picture_format(path: str | os.PathLike) -> str:
    """The Pillow format a picture file name asks for: PNG, JPEG or WEBP (any other suffix is an error)."""
    suffix = Path(path).suffix.lower()
    if suffix not in PICTURE_FORMATS:
        raise InvalidArgumentError(f"cannot write a picture as {Path(path).name!r}; name it .png, .jpg or .webp")
    return PICTURE_FORMATS[suffix]


def mp4_available() -> bool:
    """Whether the optional `imageio-ffmpeg` package (MP4 writing) is installed."""
    return importlib.util.find_spec("imageio_ffmpeg") is not None


def check_outputs(paths: Sequence[str | os.PathLike | None], force: bool = False,
                  animation: str | os.PathLike | None = None, picture: str | os.PathLike | None = None) -> None:
    """Fail before any work if two outputs are one file, if an output (`paths`, `animation` and `picture`) exists
    (without `force`), is a folder, or its folder is not writable, if `animation` is not a .gif/.mp4 (or an .mp4
    without the imageio-ffmpeg package), or if `picture` is not a .png/.jpg/.webp. `None`s (outputs not asked for)
    are skipped."""
    if animation is not None and animation_format(animation) == ".mp4" and not mp4_available():
        raise OutputPathError("writing MP4 needs ffmpeg: run `pip install imageio-ffmpeg`, or write a GIF instead")
    paths = [picture, *paths]
    outputs = [Path(p) for p in [animation, *paths] if p is not None]
    seen: dict[Path, Path] = {}
    for path in outputs:  # two outputs of one command on one file: the second would overwrite the first
        key = Path(os.path.abspath(path))
        if key in seen:
            raise OutputPathError(f"two outputs are both {path}; give each output (and --out's companions such as "
                                  "<out>_attention.png) its own name")
        seen[key] = path
    for path in outputs:
        named_file(path)
        if path.is_dir():
            raise OutputPathError(f"output path {path} is a folder; give a file name")
        if path.exists() and not force:
            raise OutputPathError(f"output file {path} already exists; pass --force to overwrite it")
        folder = path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent  # the nearest folder that exists: missing ones are created on write
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise OutputPathError(f"cannot write to folder {folder}; choose a writable output path")
    if picture is not None:
        picture_format(picture)


def check_option_file(option: str, path: Path, suffixes: Sequence[str], form: str) -> None:
    """An input file an option names (`--lora`, `--embedding`): one of `suffixes` and there, else one error line
    naming the option; `form` says what may follow the path (e.g. "optionally followed by :scale (…)")."""
    name = elide(str(path), 80)
    if path.suffix.lower() not in suffixes:
        raise InvalidArgumentError(f"{option} {name}: expected a {', '.join(suffixes)} file, {form}")
    if not path.is_file():
        raise InvalidArgumentError(f"{option} {name}: no such file; check the path")
