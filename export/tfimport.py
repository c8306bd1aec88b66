"""Importing the TensorFlow side of the export: quietly, and with a clear message without it.

TensorFlow (2.21 here) logs through absl, which writes everything logged before
absl::InitializeLog() straight to file descriptor 2 whatever TF_CPP_MIN_LOG_LEVEL says
("oneDNN custom operations are on ...", cuDNN, TF-TRT and CUDA driver notices). So while
those modules are imported, fd 2 points at a temporary file whose text then goes to the
DEBUG log; if the import raises, the text is written to the terminal as it would have been.
A crash inside the import loses it: TF_CPP_MIN_LOG_LEVEL=0 lets everything through.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import ExportError

_LOGGER = logging.getLogger(__name__)

TRAIN_EXTRA = frozenset({"tensorflow", "keras", "tf2onnx", "onnx", "h5py", "matplotlib"})
"""Top-level modules that come with the 'train' extra (pyproject.toml)."""


class MissingExtraError(ExportError):
    """A module of the 'train' extra is not installed: exit code 2."""


@contextmanager
def train_extra(purpose: str) -> Iterator[None]:
    """Wrap imports that need the 'train' extra: native log hidden, MissingExtraError if absent."""
    try:
        with native_stderr_to_debug_log():
            yield
    except ModuleNotFoundError as err:
        top = (err.name or "").partition(".")[0]
        if top not in TRAIN_EXTRA:
            raise
        raise MissingExtraError(
            f"{purpose} needs the 'train' extra: pip install 'amulet-stream[train]' "
            f"(missing module {top})"
        ) from err


@contextmanager
def native_stderr_to_debug_log() -> Iterator[None]:
    """Send what anything writes to fd 2 meanwhile to the DEBUG log (fd 2 is process-wide)."""
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode(errors="replace")
            if failed:
                sys.stderr.write(text)  # the import failed: what it printed may say why
            else:
                for line in filter(str.strip, text.splitlines()):
                    _LOGGER.debug("native stderr: %s", line)
