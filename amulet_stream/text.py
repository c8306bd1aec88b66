"""Text every stage shares: the stream id rule, and values and paths cut to a readable length
for messages (a 100 kB value makes no readable message)."""

from __future__ import annotations

import re

STREAM_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""Stream ids: letters, digits, '_' and '-' (they become MQTT topic levels and HA ids)."""


def shown(value: object, limit: int = 60) -> str:
    """repr(value), cut to about `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 5]}...{text[-2:]}"


def cut(text: str, limit: int = 200) -> str:
    """`text` (a path, a message) with its middle cut out when longer than `limit`."""
    if len(text) <= limit:
        return text
    half = (limit - 3) // 2
    return f"{text[:half]}...{text[-half:]}"
