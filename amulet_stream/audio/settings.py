"""[source]: where a stream's audio comes from (a sound card, stdin or a wav played as a stream)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from amulet_stream.audio.wav import MAX_CHANNELS, RATES
from amulet_stream.text import STREAM_ID, shown

KINDS = ("device", "stdin", "file")


@dataclass(frozen=True)
class SourceConfig:
    """Where a stream's audio comes from."""

    kind: str = "device"
    """'device' (sound card), 'stdin' (raw S16_LE PCM) or 'file' (a wav played as a stream)."""
    device: str | int | None = None
    """Device name (or unique part of it) or index; None: the system default input."""
    rate: int | None = None
    """Capture rate in Hz; None: the device's default (stdin: required)."""
    channels: int | None = None
    """Channels to open; None: enough for `channel` (stdin: 1)."""
    channel: int | None = None
    """0-based channel to use; None: down-mix."""
    stream: str = "default"
    """Stream id in every output line."""
    path: Path | None = None
    """kind 'file': the wav to play."""
    realtime: bool = True
    """kind 'file': pace at real time (False: as fast as it reads)."""
    loop: bool = False
    """kind 'file': start again at the end (a demo that never ends)."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {shown(self.kind)}")
        if not STREAM_ID.fullmatch(self.stream):
            raise ValueError(
                f"stream {shown(self.stream)}: use 1 to 64 letters, digits, '_' or '-' "
                "(it becomes an MQTT topic level)"
            )
        for key in ("rate", "channels"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key} must be a positive number, not {value}")
        if self.rate is not None and not RATES[0] <= self.rate <= RATES[1]:
            raise ValueError(f"rate must be {RATES[0]} to {RATES[1]} Hz, not {self.rate}")
        if self.channels is not None and self.channels > MAX_CHANNELS:
            raise ValueError(f"channels must be 1 to {MAX_CHANNELS}, not {self.channels}")
        if self.channel is not None and self.channel < 0:
            raise ValueError(f"channel is 0-based and cannot be negative ({self.channel})")
        if self.channel is not None and self.channel >= MAX_CHANNELS:
            raise ValueError(f"channel must be 0 to {MAX_CHANNELS - 1}, not {self.channel}")
        if self.channel is not None and self.channels is not None and self.channel >= self.channels:
            raise ValueError(
                f"channel {self.channel} does not exist when {self.channels} channel(s) are opened"
            )
        if isinstance(self.device, str) and not self.device.strip():
            raise ValueError("device must name a device (or part of its name), not ''")
        if isinstance(self.device, int) and self.device < 0:
            raise ValueError(f"device index cannot be negative ({self.device})")
        if self.kind == "stdin" and self.device is not None:
            raise ValueError("device is for kind = 'device' (this source is kind = 'stdin')")
        if self.kind != "file" and self.path is not None:
            raise ValueError(
                f"path is for kind = 'file' (this source is kind = {self.kind!r}"
                + (", the default)" if self.kind == "device" else ")")
            )
        if self.kind == "file" and (self.device, self.rate, self.channels) != (None,) * 3:
            raise ValueError("kind = 'file' takes no device, rate or channels: the wav sets them")
        if self.kind == "file" and self.path is None:
            raise ValueError("path is needed for kind = 'file' (the wav to play)")
