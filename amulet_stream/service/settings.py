"""[daemon]: how `run` keeps its streams alive, and where it keeps state between starts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from amulet_stream.text import cut


@dataclass(frozen=True)
class DaemonConfig:
    """[daemon]: how `run` keeps streams alive."""

    state_dir: Path | None = None
    """Where the daemon keeps state between starts; None: $STATE_DIRECTORY if set."""
    stall_seconds: float = 5.0
    """A source that delivers no audio this long is marked down and reopened."""
    reopen_attempts: int = 10
    """Exit (status 3, for systemd to restart) after this many failed reopens of every stream."""
    reopen_max_seconds: float = 60.0
    """Longest wait between reopen attempts (the backoff doubles from 1 s up to this)."""

    def __post_init__(self) -> None:
        if self.state_dir is not None:
            check_state_dir(self.state_dir)
        if not 0.5 <= self.stall_seconds <= 3600:
            raise ValueError(f"stall_seconds must be in [0.5, 3600], not {self.stall_seconds}")
        if self.reopen_attempts < 1:
            raise ValueError(f"reopen_attempts must be at least 1, not {self.reopen_attempts}")
        if not 1 <= self.reopen_max_seconds <= 3600:
            raise ValueError(
                f"reopen_max_seconds must be in [1, 3600], not {self.reopen_max_seconds}"
            )


def check_state_dir(path: Path) -> None:
    """Refuse a state_dir that cannot be a folder: a file, or a name the system refuses."""
    try:
        if path.exists() and not path.is_dir():
            raise ValueError(f"state_dir {cut(str(path))}: exists and is not a folder")
    except OSError as err:  # e.g. a name too long
        raise ValueError(f"state_dir {cut(str(path))}: {err.strerror or err}") from err
