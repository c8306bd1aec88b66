"""amulet-stream: always-on acoustic anomaly monitor for electric motors."""

__version__ = "0.1.0"
