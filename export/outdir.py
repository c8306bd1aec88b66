"""Output folder handling: early checks and a staging folder renamed into place at the end."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from amulet_stream.audio.wav import WavError, read_info

from .errors import InputError

if TYPE_CHECKING:
    import onnx


def check(output_dir: Path, predict_file: Path | None) -> None:
    """Fail early on a bad --predict-file or an output path that is not a folder."""
    if predict_file is not None:
        try:
            read_info(predict_file)
        except WavError as err:
            raise InputError(str(err)) from err
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"{output_dir}: exists and is not a folder")


def stage(output_dir: Path) -> Path:
    """A fresh staging folder beside output_dir; InputError if it cannot be written."""
    parent = output_dir.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=parent))
    except OSError as err:
        raise InputError(f"{output_dir}: cannot write output: {err.strerror or err}") from err


def save_atomic(proto: onnx.ModelProto, path: Path) -> None:
    """Write to a temporary name beside `path`, then rename: never a half-written model."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(proto.SerializeToString())
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise InputError(f"{path}: cannot write model: {err.strerror or err}") from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
