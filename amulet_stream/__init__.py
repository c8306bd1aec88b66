"""amulet-stream: always-on acoustic anomaly monitor for electric motors."""

import os

# One BLAS thread, set before numpy loads OpenBLAS: the monitor's matrices are small, and on a
# busy machine OpenBLAS's thread pool made the mel projection 12-25x slower (docs/design-notes).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
