"""Sound-card input devices through PortAudio (sounddevice)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class DeviceError(ValueError):
    """PortAudio missing, or a device that does not exist; the message says which."""


@dataclass(frozen=True)
class InputDevice:
    """One input device as PortAudio lists it."""

    index: int
    name: str
    channels: int
    default_rate: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "index": self.index,
            "name": self.name,
            "channels": self.channels,
            "default_rate": self.default_rate,
        }


def _sd() -> Any:
    try:
        import sounddevice as sd
    except OSError as err:
        raise DeviceError(
            f"PortAudio library not found ({err}): install it, e.g. apt-get install libportaudio2"
        ) from err
    return sd


def list_inputs() -> list[InputDevice]:
    """Every device with at least one input channel."""
    sd = _sd()
    return [
        InputDevice(i, str(d["name"]), int(d["max_input_channels"]), int(d["default_samplerate"]))
        for i, d in enumerate(sd.query_devices())
        if int(d["max_input_channels"]) > 0
    ]


def resolve(spec: str | int | None) -> InputDevice:
    """A device by index, exact name or unique part of its name; None: the default input."""
    devices = list_inputs()
    if not devices:
        raise DeviceError("no input device found")
    if spec is None:
        default = _sd().default.device[0]
        match = [d for d in devices if d.index == default] or devices[:1]
        return match[0]
    if isinstance(spec, int) or spec.isdigit():
        match = [d for d in devices if d.index == int(spec)]
    else:
        match = [d for d in devices if d.name == spec] or [
            d for d in devices if spec.lower() in d.name.lower()
        ]
    if len(match) != 1:
        problem = "matches several devices" if match else "is not an input device"
        listing = "; ".join(
            f"{d.index}: {d.name} ({d.channels} ch, {d.default_rate} Hz)" for d in devices
        )
        raise DeviceError(f"device {spec!r} {problem}. Input devices: {listing}")
    return match[0]
