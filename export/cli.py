"""Command line of amulet-export. Exit codes: 0 ok, 1 verification/parity failed, 2 bad input."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .cli_evaluate import evaluate_command
from .cli_seed import import_seed_command
from .cli_synth import synth_command
from .cli_train import train_command
from .errors import EXIT_FAIL, EXIT_INPUT, EXIT_OK
from .train_config import ARCHITECTURES

_CONSOLE = "amulet-export-console"


def _parser() -> argparse.ArgumentParser:
    from amulet_stream.scoring.features import DEFAULT_PROFILE, PROFILES
    from amulet_stream.synth.spec import BENIGN, FAULTS, KINDS

    p = argparse.ArgumentParser(prog="amulet-export", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model on healthy recordings -> OUT/model.onnx")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--input-file", "--input_file", type=Path, help="one wav file")
    src.add_argument("--input-dir", "--input_dir", type=Path, help="a folder of wav files")
    t.add_argument(
        "--output-dir",
        "--output_dir",
        "--out",  # as evaluate says it
        type=Path,
        default=Path("output"),
        help="where model.onnx, train.log and plots go (default: ./output)",
    )
    t.add_argument(
        "--profile",
        choices=sorted(p for p in PROFILES if p != "mfcc-image-v1"),  # that one: evaluate
        default=DEFAULT_PROFILE,
        help=f"feature profile (default: {DEFAULT_PROFILE})",
    )
    t.add_argument(
        "--architecture",
        choices=ARCHITECTURES,
        help="the model: Keras autoencoders (dense, lstm: AMULET's, lstm-frames: over a "
        "vector's frames) or closed-form (pca, mahalanobis) (default: lstm for amulet-v1, "
        "dense otherwise)",
    )
    t.add_argument("--epochs", type=int, default=20, help="training epochs (default: 20)")
    t.add_argument("--batch-size", "--batch_size", type=int, default=32)
    t.add_argument(
        "--predict-file",
        "--predict_file",
        type=Path,
        help="score this wav with the new model and plot it",
    )
    t.add_argument("--channel", type=int, help="0-based channel to use (default: down-mix)")
    t.add_argument(
        "--threshold-method",
        choices=["max", "gamma", "recordings"],
        help="max training score (AMULET), gamma quantile of held-out windows, or recordings: "
        "no held-out recording (other files, or stretches of one file) would have alerted, "
        "with their spread (default: max for amulet-v1, recordings otherwise)",
    )
    t.add_argument(
        "--threshold-quantile",
        type=float,
        default=0.99,
        help="quantile for --threshold-method gamma and recordings (default: 0.99)",
    )
    t.add_argument("--seed", type=int, default=10, help="random seed (default: 10, as AMULET)")
    t.add_argument("--silent", action="store_true", help="log only to OUT/train.log")

    s = sub.add_parser("import-seed", help="AMULET .h5 + scaler + threshold -> one .onnx")
    s.add_argument("dir", type=Path, nargs="?", help="AMULET output folder")
    s.add_argument("-o", "--output", type=Path, required=True, help="the .onnx to write")
    s.add_argument("--h5", type=Path, help="default: DIR/sound_anomaly_detection.h5")
    s.add_argument("--scaler", type=Path, help="default: DIR/scaler")
    s.add_argument("--threshold", type=Path, help="default: DIR/anomaly_threshold")

    e = sub.add_parser(
        "evaluate",
        help="train candidate models on a generated fault corpus; hits, false alarms, delays",
    )
    e.add_argument(
        "--size",
        choices=["small", "full"],
        default="small",
        help="corpus size: small (a few minutes, as CI runs it) or full",
    )
    e.add_argument(
        "--out", type=Path, default=Path("evaluation"), help="results folder (./evaluation)"
    )
    e.add_argument("--work", type=Path, help="where the corpus wavs go (default: a temp dir)")
    e.add_argument(
        "--candidates",
        help="comma-separated subset of: amulet-lstm, dense-ae, pca, mahalanobis, "
        "lstm-frames, dcgan, dcgan-discriminator (default: all)",
    )
    e.add_argument("--epochs", type=int, default=20, help="epochs for Keras candidates (20)")
    e.add_argument(
        "--normal-hours",
        type=float,
        help="hours of generated normal audio for false alarms per 24 h "
        "(default: 24 for full, 0.1 for small)",
    )
    e.add_argument(
        "--real",
        type=Path,
        help="a healthy real recording: also evaluate on faults injected into it "
        "(trained on its first part)",
    )
    e.add_argument(
        "--dataset",
        type=Path,
        help="labelled real recordings instead of the generated corpus: normal/ and anomaly/ "
        "folders, or DCASE names with normal/anomaly (default candidates: dense-ae, pca, "
        "mahalanobis, amulet-lstm)",
    )
    e.add_argument(
        "--folds", type=int, default=5, help="--dataset: folds over the normal recordings (5)"
    )
    e.add_argument(
        "--train-files",
        type=int,
        help="--dataset: train each fold on the first N of its normal recordings (default: all)",
    )

    a = sub.add_parser(
        "adapt",
        help="fold recordings marked normal (feedback) into a model: refit or retrain, recalibrate",
    )
    a.add_argument("model", type=Path, help="the model in use (.onnx)")
    a.add_argument("--feedback", type=Path, metavar="STATE_DIR", help="the daemon's state_dir")
    a.add_argument("--stream", metavar="ID", help="with --feedback: the stream whose labels")
    a.add_argument("--normal", type=Path, nargs="+", metavar="FILE", help="or wav files")
    a.add_argument(
        "--input-dir",
        type=Path,
        metavar="DIR",
        help="the model's training audio: train it again with the recordings marked normal",
    )
    a.add_argument("-o", "--output", type=Path, required=True, help="the new model (.onnx)")
    a.add_argument("--silent", action="store_true", help="errors only on the terminal")
    v = sub.add_parser("verify", help="check a model file; exit 0 if complete and working")
    v.add_argument("model", type=Path)

    g = sub.add_parser("synth", help="write generated motor sound (healthy or with a fault)")
    g.add_argument("-o", "--output", type=Path, required=True)
    g.add_argument("--seconds", type=float, default=60.0)
    g.add_argument("--rate", type=int, default=16000)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument(
        "--fault",
        choices=KINDS,
        metavar="KIND",
        help=f"a fault ({', '.join(FAULTS)}) or a benign event ({', '.join(BENIGN)})",
    )
    g.add_argument("--fault-start", type=float, default=0.0, help="seconds")
    g.add_argument("--fault-end", type=float, help="seconds (default: the end)")
    g.add_argument("--severity", type=float, default=0.5, help="0..1 (default 0.5)")
    g.add_argument("--rpm", type=float, default=1470.0, help="motor speed (default 1470)")
    g.add_argument("--load", type=float, default=0.75, help="fraction of rated load (0.75)")
    return p


def _setup_logging(silent: bool) -> None:
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    # ours from an earlier call, or a console handler another entry point (amulet-stream's
    # basicConfig, in the same process) left on a stream that may be closed by now
    for old in [h for h in root.handlers if type(h) is logging.StreamHandler]:
        root.removeHandler(old)
    h = logging.StreamHandler(sys.stderr)
    h.set_name(_CONSOLE)
    h.setFormatter(logging.Formatter("amulet-export: %(message)s"))
    if silent:  # errors only (and no bare lines from logging's last-resort handler)
        h.setLevel(logging.ERROR)
    root.addHandler(h)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for noisy in ("tensorflow", "tf2onnx", "absl", "h5py", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the amulet-export console script."""
    args = _parser().parse_args(argv)
    _setup_logging(getattr(args, "silent", False))
    from .errors import InputError, ParityError
    from .tfimport import MissingExtraError

    try:
        if args.command == "verify":
            from .verify import verify

            ok, line = verify(args.model)
            print(line)
            return EXIT_OK if ok else EXIT_FAIL
        if args.command == "adapt":
            from .tfimport import train_extra

            with train_extra("adapt"):
                from .adapt import adapt_command

            return adapt_command(args)
        if args.command == "synth":
            return synth_command(args)
        if args.command == "evaluate":
            return evaluate_command(args, argv)
        if args.command == "import-seed":
            return import_seed_command(args)
        return train_command(args)
    except (InputError, MissingExtraError) as err:
        print(f"amulet-export: error: {err}", file=sys.stderr)
        return EXIT_INPUT
    except ParityError as err:
        print(f"amulet-export: error: {err}", file=sys.stderr)
        return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
