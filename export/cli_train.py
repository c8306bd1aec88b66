"""`amulet-export train`: arguments and audio checked before TensorFlow is imported, then train."""

from __future__ import annotations

import argparse

from .errors import EXIT_OK


def train_command(args: argparse.Namespace) -> int:
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
        from .train import train
        from .train_config import TrainConfig

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
