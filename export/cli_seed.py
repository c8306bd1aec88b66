"""`amulet-export import-seed`: AMULET's three files found and checked, then one .onnx written."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .errors import EXIT_OK

_LOGGER = logging.getLogger(__name__)


def import_seed_command(args: argparse.Namespace) -> int:
    from .errors import InputError
    from .tfimport import train_extra

    with train_extra("import-seed"):
        from .seed import import_seed

    base: Path | None = args.dir
    if base is None and not (args.h5 and args.scaler and args.threshold):
        raise InputError("import-seed needs DIR or all of --h5, --scaler, --threshold")
    if base is not None and not base.is_dir():
        raise InputError(f"{base}: no such folder")
    h5 = args.h5 or base / "sound_anomaly_detection.h5"  # type: ignore[operator]
    scaler = args.scaler or base / "scaler"  # type: ignore[operator]
    thr = args.threshold or base / "anomaly_threshold"  # type: ignore[operator]
    for f in (h5, scaler, thr):
        if not f.is_file():
            raise InputError(f"{f}: no such file")
    diff = import_seed(h5, scaler, thr, args.output)
    _LOGGER.info("wrote %s (parity %.1e)", args.output, diff)
    print(args.output)
    return EXIT_OK
