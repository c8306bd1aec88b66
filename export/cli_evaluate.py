"""`amulet-export evaluate`: arguments checked, corpus written, candidates run and reported."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import EXIT_OK

if TYPE_CHECKING:
    from .realdata import LabelledSet

DATASET_CANDIDATES = ["dense-ae", "pca", "mahalanobis", "amulet-lstm"]


def evaluate_command(args: argparse.Namespace, argv: list[str] | None) -> int:
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
    default = DATASET_CANDIDATES if args.dataset is not None else list(trainers)
    names = args.candidates.split(",") if args.candidates else default
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
    data = None if args.dataset is None else _dataset_checked(args)  # before TensorFlow's 6 s
    from .tfimport import train_extra

    with train_extra("evaluation"):  # every candidate is trained: fail now, not after the corpus
        from . import dcgan, train  # noqa: F401
    if data is not None:
        return _dataset(args, data, chosen, command)
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


def _dataset_checked(args: argparse.Namespace) -> LabelledSet:
    """--dataset's arguments checked and its recordings found; --out created."""
    from . import realdata
    from .errors import InputError

    if args.folds < 2:
        raise InputError("--folds must be at least 2")
    if args.train_files is not None and args.train_files < 1:
        raise InputError("--train-files must be at least 1")
    data = realdata.find(args.dataset)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"--out {args.out}: cannot create it: {err.strerror}") from err
    return data


def _dataset(args: argparse.Namespace, data: LabelledSet, chosen: list[Any], command: str) -> int:
    """--dataset: the candidates on labelled real recordings, folds over the normal ones."""
    from . import realdata, realdata_report

    outcomes = realdata.run(data, chosen, args.folds, args.train_files)
    folds = len(realdata.folds(data.normal, args.folds))
    doc = realdata_report.write(data, outcomes, folds, args.out, command)
    for name, c in doc["candidates"].items():
        print(
            f"{name}: clip AUC {c['auc']}, pAUC {c['pauc']}; anomalous alerted "
            f"{c['anomalies_alerted']}/{c['anomalies_tested']}, normal alerted "
            f"{c['normal_alerted']}/{c['normal_tested']}"
        )
    if "loudness" in doc:
        print(f"loudness alone: clip AUC {doc['loudness']['auc']}")
    print(args.out / "evaluation.md")
    return EXIT_OK


def _dcgan_trainer(rule: str) -> Callable[[list[Path], Path], Path]:
    """Trains AMULET's DCGAN (its own epoch budget, dcgan.DEFAULT_EPOCHS) with a scoring rule."""

    def run(wavs: list[Path], out: Path) -> Path:
        from .dcgan import train_dcgan

        path: Path = train_dcgan(wavs, out, rule=rule)
        return path

    return run
