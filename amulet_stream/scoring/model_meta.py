"""A model file's amulet metadata (metadata_props): the format version, the feature profile
and the threshold, each checked so that a corrupt or foreign file is refused with the reason."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from amulet_stream.audio.wav import RATES
from amulet_stream.scoring.features import MFCC_IMAGE, Profile, ProfileError, profile_from_dict
from amulet_stream.scoring.levels import level_range
from amulet_stream.scoring.loudness import level_band

FORMAT_VERSION = 1
META_KEY = "amulet"
REQUIRED = (
    "format_version",
    "profile",
    "threshold",
    "threshold_method",
    "train_scores",
    "fingerprint",
    "versions",
    "parity",
)

MAX_DIM = 8192
"""Most features per vector a profile may give (the shipped profiles: 3 to 880)."""
_INT_PARAMS = ("rate", "window", "hop", "offset", "n_fft", "frame_hop", "n_mels", "n_mfcc",
               "stack", "stft_size")  # fmt: skip


class ModelError(ValueError):
    """A file that is not a usable amulet model; the message says why."""


@dataclass(frozen=True)
class ModelMeta:
    """The amulet metadata stored in the model's metadata_props."""

    profile: Profile
    threshold: float
    """Score above which a window is anomalous (before sensitivity)."""
    threshold_method: str
    raw: dict[str, Any]
    """The whole metadata document as stored."""


def parse_meta(props: dict[str, str], name: str) -> ModelMeta:
    """Validate the metadata map of an ONNX model; raise ModelError naming the problem."""
    if META_KEY not in props:
        raise ModelError(f"{name}: not an amulet model (no '{META_KEY}' metadata)")
    try:
        doc = json.loads(props[META_KEY])
    except (json.JSONDecodeError, RecursionError) as err:  # RecursionError: nested too deep
        raise ModelError(f"{name}: amulet metadata is not valid JSON: {err}") from err
    if not isinstance(doc, dict):
        raise ModelError(f"{name}: amulet metadata is not a JSON object")
    missing = [k for k in REQUIRED if k not in doc]
    if missing:
        raise ModelError(f"{name}: amulet metadata lacks {', '.join(missing)}")
    if doc["format_version"] != FORMAT_VERSION:
        raise ModelError(
            f"{name}: model format version {doc['format_version']!r}, this version reads "
            f"{FORMAT_VERSION}"
        )
    profile = _profile(doc["profile"], name)
    threshold = _number(doc["threshold"])
    if threshold is None or not threshold > 0:
        raise ModelError(f"{name}: threshold {_short(doc['threshold'])} is not a positive number")
    try:
        level_range(doc)
        level_band(doc)
    except ValueError as err:
        raise ModelError(f"{name}: {_short(err, 200)}") from err
    except OverflowError as err:
        raise ModelError(f"{name}: input_level_dbfs holds a number too large") from err
    return ModelMeta(profile, threshold, str(doc["threshold_method"]), doc)


def _number(value: object) -> float | None:
    """A JSON number as a finite float, else None (bools, huge integers, NaN, strings...)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _short(value: object, limit: int = 60) -> str:
    """repr of a metadata value (str of an exception) cut to `limit` characters for a message."""
    text = str(value) if isinstance(value, Exception) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _profile(data: object, name: str) -> Profile:
    """The feature profile of the metadata, its parameters typed and within sane bounds (a
    corrupt one must not make the feature code allocate without bound); else ModelError."""
    if not isinstance(data, dict):
        raise ModelError(f"{name}: feature profile is not a JSON object: {_short(data)}")
    for key in _INT_PARAMS:
        value = data.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or abs(value) >= 1 << 31:
            raise ModelError(
                f"{name}: feature profile parameter {key} {_short(value)} is not an integer "
                "(within +-2^31)"
            )
    if not isinstance(data.get("name"), str):
        raise ModelError(f"{name}: feature profile name {_short(data.get('name'))} is not a string")
    if not isinstance(data.get("pad_tail", False), bool):
        raise ModelError(f"{name}: feature profile parameter pad_tail is not true or false")
    try:
        p = profile_from_dict(data)
    except ProfileError as err:
        raise ModelError(f"{name}: {err}") from err
    image = p.name == MFCC_IMAGE
    min_mfcc = 0 if p.name == "logmel-v1" else 1
    checks = [
        (RATES[0] <= p.rate <= RATES[1], f"rate {p.rate} Hz is outside {RATES[0]}..{RATES[1]} Hz"),
        (1 <= p.n_fft <= min(p.window, 1 << 17), f"n_fft {p.n_fft} is not within 1 to window"),
        (p.window <= 60 * p.rate, f"window {p.window} is longer than 60 s"),
        (1 <= p.frame_hop <= p.n_fft, f"frame_hop {p.frame_hop} is not within 1 to n_fft"),
        (p.rate <= 1000 * p.step, f"{p.rate / p.step:.0f} frames per second is more than 1000"),
        (0 <= p.offset <= p.window, f"offset {p.offset} is not within 0 to window"),
        (p.hop <= 3600 * p.rate, f"hop {p.hop} is longer than an hour"),
        (1 <= p.n_mels <= 512, f"n_mels {p.n_mels} is not within 1 to 512"),
        (min_mfcc <= p.n_mfcc <= p.n_mels, f"n_mfcc {p.n_mfcc} is not within {min_mfcc} to n_mels"),
        (1 <= p.stack <= 64, f"stack {p.stack} is not within 1 to 64"),
        (2 <= p.stft_size <= p.n_fft if image else p.stft_size == 0, f"stft_size {p.stft_size}"),
        (p.dim <= MAX_DIM, f"{p.dim} features per vector is more than {MAX_DIM}"),
    ]
    problems = [text for ok, text in checks if not ok]
    if problems:
        raise ModelError(f"{name}: feature profile {p.name!r}: {'; '.join(problems)}")
    return p
