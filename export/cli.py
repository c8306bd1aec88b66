"""Command line of amulet-export. Exit codes: 0 ok, 1 verification/parity failed, 2 bad input."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

EXIT_OK, EXIT_FAIL, EXIT_INPUT = 0, 1, 2
_CONSOLE = "amulet-export-console"


def _parser() -> argparse.ArgumentParser:
    from amulet_stream.scoring.features import DEFAULT_PROFILE, PROFILES
    from amulet_stream.synth.motor import BENIGN, FAULTS, KINDS

    p = argparse.ArgumentParser(prog="amulet-export", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model on healthy recordings -> OUT/model.onnx")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--input-file", "--input_file", type=Path, help="one wav file")
    src.add_argument("--input-dir", "--input_dir", type=Path, help="a folder of wav files")
    t.add_argument(
        "--output-dir",
        "--output_dir",
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
        choices=["dense", "lstm", "lstm-frames", "pca", "mahalanobis"],
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
        choices=["max", "gamma"],
        help="max training score (AMULET) or gamma quantile of held-out scores "
        "(default: max for amulet-v1, gamma otherwise)",
    )
    t.add_argument(
        "--threshold-quantile",
        type=float,
        default=0.99,
        help="quantile for --threshold-method gamma (default: 0.99)",
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
        if args.command == "synth":
            return _synth(args)
        if args.command == "evaluate":
            return _evaluate(args, argv)
        if args.command == "import-seed":
            return _import_seed(args)
        return _train(args)
    except (InputError, MissingExtraError) as err:
        print(f"amulet-export: error: {err}", file=sys.stderr)
        return EXIT_INPUT
    except ParityError as err:
        print(f"amulet-export: error: {err}", file=sys.stderr)
        return EXIT_FAIL


def _train(args: argparse.Namespace) -> int:
    from amulet_stream.scoring.features import PROFILES

    from . import outdir
    from .dataset import list_inputs, load
    from .errors import InputError
    from .tfimport import train_extra

    if args.epochs < 1 or args.batch_size < 1:
        raise InputError("--epochs and --batch-size must be at least 1")
    if not 0.5 < args.threshold_quantile < 1.0:
        raise InputError("--threshold-quantile must be between 0.5 and 1")
    if args.profile == "amulet-v1" and args.architecture not in (None, "lstm"):
        raise InputError(
            "--profile amulet-v1 has 3 features per row: only its own LSTM (AMULET's, "
            "--architecture lstm) learns anything from them"
        )
    inputs = list_inputs(args.input_file, args.input_dir)
    outdir.check(args.output_dir, args.predict_file)
    outdir.stage(args.output_dir).rmdir()
    # read and check all audio before TensorFlow is even imported: bad input fails fast
    data = load(inputs, PROFILES[args.profile], args.channel)
    with train_extra("training"):
        from .train import TrainConfig, train

    cfg = TrainConfig(
        inputs=inputs,
        output_dir=args.output_dir,
        profile=args.profile,
        epochs=args.epochs,
        batch_size=args.batch_size,
        predict_file=args.predict_file,
        channel=args.channel,
        threshold_method=args.threshold_method,
        quantile=args.threshold_quantile,
        seed=args.seed,
        architecture=args.architecture,
    )
    path = train(cfg, data)
    print(path)
    return EXIT_OK


def _evaluate(args: argparse.Namespace, argv: list[str] | None) -> int:
    import tempfile

    from amulet_stream.audio.wav import WavError

    from . import corpus, evaluate, evaluate_report
    from .errors import InputError

    trainers = {
        c.name: (c.name, evaluate.train_candidate(c, args.epochs), c.note)
        for c in evaluate.CANDIDATES
    }
    for rule, note in (("amulet", "AMULET's rule: pixel difference"), ("discriminator", "1 - D")):
        name = "dcgan" if rule == "amulet" else f"dcgan-{rule}"
        trainers[name] = (name, _dcgan_trainer(rule), f"AMULET's DCGAN on MFCC images, {note}")
    names = args.candidates.split(",") if args.candidates else list(trainers)
    unknown = [n for n in names if n not in trainers]
    if unknown:
        known = ", ".join(trainers)
        raise InputError(f"--candidates: unknown {', '.join(unknown)} (known: {known})")
    if args.epochs < 1:
        raise InputError("--epochs must be at least 1")
    hours = args.normal_hours
    if hours is None:
        hours = 24.0 if args.size == "full" else 0.1
    if hours < 0:
        raise InputError("--normal-hours must not be negative")
    if args.real is not None and not args.real.is_file():
        raise InputError(f"--real {args.real}: no such file")
    command = "amulet-export " + " ".join(sys.argv[1:] if argv is None else argv)
    chosen = [trainers[n] for n in names]
    from .tfimport import train_extra

    with train_extra("evaluation"):  # every candidate is trained: fail now, not after the corpus
        from . import dcgan, train  # noqa: F401
    with tempfile.TemporaryDirectory(prefix="amulet-eval-") as tmp:
        work = args.work or Path(tmp)
        real = None
        if args.real is not None:  # first: a recording that cannot be used fails at once
            try:
                real = corpus.real_corpus(args.real, work / "real")
            except (ValueError, WavError) as err:
                raise InputError(f"--real {args.real}: {err}") from err
        try:
            args.out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(f"--out {args.out}: cannot create it: {err.strerror}") from err
        corp = corpus.synthetic_corpus(work / "synthetic", args.size)
        results = evaluate.run(corp, args.out, hours, chosen)
        doc = evaluate_report.write(results, corp, args.out, hours, command)
        if real is not None:
            res = evaluate.run(real, work / "real-out", 0.0, chosen)
            evaluate_report.write(res, real, args.out / "real", 0.0, command)
    for name, c in doc["candidates"].items():
        fa = c["false_alarms_per_24h"]
        print(
            f"{name}: {c['hits']}/{c['faults']} faults alerted, median delay "
            f"{c['median_delay_s']} s, "
            + ("false alarms not measured" if fa != fa else f"{fa} false alarms / 24 h")
        )
    print(args.out / "evaluation.md")
    return EXIT_OK


def _dcgan_trainer(rule: str) -> Callable[[list[Path], Path], Path]:
    """Trains AMULET's DCGAN (its own epoch budget, dcgan.DEFAULT_EPOCHS) with a scoring rule."""

    def run(wavs: list[Path], out: Path) -> Path:
        from .dcgan import train_dcgan

        path: Path = train_dcgan(wavs, out, rule=rule)
        return path

    return run


def _import_seed(args: argparse.Namespace) -> int:
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
    logging.getLogger(__name__).info("wrote %s (parity %.1e)", args.output, diff)
    print(args.output)
    return EXIT_OK


def _synth(args: argparse.Namespace) -> int:
    """Generate and write in one-second blocks: memory stays flat however long the audio."""
    from amulet_stream.audio.wav import RATES, write_wav_blocks
    from amulet_stream.synth.motor import F32, Fault, Motor, generate_blocks

    from .errors import InputError

    if not 8000 <= args.rate <= RATES[1]:
        raise InputError(f"--rate must be between 8000 and {RATES[1]} Hz, not {args.rate}")
    longest = (0xFFFFFFFF - 36) // 2 // args.rate  # a wav's data chunk holds at most 4 GiB
    if not 0 < args.seconds <= longest:
        raise InputError(
            f"--seconds must be more than 0 and at most {longest} at {args.rate} Hz (a wav file "
            f"holds at most 4 GiB), not {args.seconds:g}"
        )
    if not 300 <= args.rpm <= 6000 or not 0 <= args.load <= 1:
        raise InputError("--rpm must be between 300 and 6000 and --load between 0 and 1")
    fault = None
    try:
        motor = Motor(rpm=args.rpm, load=args.load)
        if args.fault:
            end = args.fault_end or args.seconds
            fault = Fault(args.fault, args.fault_start, end, args.severity)
    except ValueError as err:
        raise InputError(str(err)) from err
    opened = False

    def blocks() -> Iterator[F32]:
        nonlocal opened
        opened = True  # the first block is asked for once the file is open (and truncated)
        yield from generate_blocks(args.seconds, args.rate, args.seed, motor, fault)

    try:
        write_wav_blocks(args.output, blocks(), args.rate)
    except BaseException as err:  # also Ctrl-C: no half-written wav (its header comes last)
        if opened and args.output.is_file():
            args.output.unlink()
        if isinstance(err, OSError):
            raise InputError(f"{args.output}: cannot write: {err.strerror or err}") from err
        if isinstance(err, KeyboardInterrupt):
            print(f"amulet-export: interrupted, {args.output} not written", file=sys.stderr)
            return 130
        raise
    print(args.output)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
