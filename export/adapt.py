"""`amulet-export adapt`: fold recordings an operator marked normal (and a stream's learned
commissioning values) into a model: the threshold and level range are recalibrated so those
recordings would not have alerted, through the runtime's own commissioning path; the graph is
unchanged. The new file is verified like any export, and adapt says what it changed."""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import onnx

from amulet_stream.audio.sources import FileSource
from amulet_stream.audio.wav import WavError, read_info
from amulet_stream.outputs.feedback import FOLDER as FEEDBACK
from amulet_stream.scoring.commission import SUSPECT_RATIO, Learned
from amulet_stream.scoring.detector import DetectorSettings
from amulet_stream.scoring.model import Model
from amulet_stream.scoring.model_meta import META_KEY, ModelError
from amulet_stream.scoring.pipeline import StreamPipeline, replay
from amulet_stream.service import learned as learned_store
from amulet_stream.text import STREAM_ID, shown

from .adapt_refit import metadata, refit, retrain
from .errors import EXIT_FAIL, EXIT_OK, InputError
from .outdir import save_atomic
from .verify import verify

_LOGGER = logging.getLogger(__name__)


def heard(model: Model, wav: Path) -> Learned:
    """What a stream would learn on site from the whole of `wav` (default detector)."""
    try:
        src = FileSource(read_info(wav))
    except (OSError, WavError) as err:
        raise InputError(f"{wav}: {err}") from err
    settings = DetectorSettings(learn_seconds=src.info.duration)
    pipe = StreamPipeline(model, src.rate, settings=settings)
    replay(pipe, src)
    site = pipe.site
    if site.learned is not None:
        return site.learned
    if site.learning is None:
        raise InputError(f"{wav}: too short to learn from ({src.info.duration:.2f} s)")
    return site.decision()


def normal_files(args: argparse.Namespace) -> tuple[list[Path], str]:
    """The recordings to fold in, and where they came from (in words)."""
    if (args.feedback is None) == (not args.normal):
        raise InputError("adapt needs --feedback STATE_DIR --stream ID, or --normal FILE...")
    if args.normal:
        missing = [f for f in args.normal if not f.is_file()]
        if missing:
            raise InputError(f"--normal {missing[0]}: no such file")
        return list(args.normal), f"{len(args.normal)} file(s) given"
    if args.stream is None or not STREAM_ID.fullmatch(args.stream):
        raise InputError(f"--feedback needs --stream ID, not {shown(args.stream)}")
    folder = args.feedback / FEEDBACK / args.stream / "normal"
    if not args.feedback.is_dir():
        raise InputError(f"--feedback {args.feedback}: no such folder (the daemon's state_dir)")
    files = sorted(folder.glob("*.wav")) if folder.is_dir() else []
    return files, f"{len(files)} clip(s) marked normal in {folder}"


def adapt_command(args: argparse.Namespace) -> int:
    """Write the adapted model to args.output; one line per change on stderr."""
    try:
        model = Model(args.model)
    except ModelError as err:
        raise InputError(str(err)) from err
    files, where = normal_files(args)
    if args.input_dir is not None and not args.input_dir.is_dir():
        raise InputError(f"--input-dir {args.input_dir}: no such folder")
    learned = None
    if args.feedback is not None:
        learned = learned_store.load(args.feedback, args.stream, model.sha256)
    if not files and learned is None:
        raise InputError(f"nothing to fold in: {where}, and no learned values of this model")
    if args.output.resolve() == args.model.resolve():
        raise InputError("-o must name a new file: the model in use stays as it is")
    proto = onnx.load(str(args.model))
    doc = metadata(proto)
    changes: list[str] = []
    if args.input_dir is not None:
        proto, doc, changes = retrain(doc, args.input_dir, files)
    elif (done := refit(proto, doc, files)) is not None:
        proto, changes = done
    with tempfile.TemporaryDirectory(prefix="amulet-adapt-") as tmp:
        judge = model
        if changes:  # a new graph: the recordings are heard by it
            _store(proto, doc)
            save_atomic(proto, Path(tmp) / "graph.onnx")
            judge = Model(Path(tmp) / "graph.onnx")
        found = [heard(judge, f) for f in files]
    if learned is not None and not changes:
        found.append(learned)
    elif learned is not None:
        changes.append("the stream's learned threshold belongs to the old graph: not carried over")
    threshold = max([float(doc["threshold"]), *(x.threshold for x in found)])
    changes.append(f"threshold {model.threshold:.6g} -> {threshold:.6g}")
    bands = [x.level for x in [*found, learned] if x is not None and x.level is not None]
    if bands and isinstance(doc.get("level"), dict):
        old = doc["level"]
        low = min([old["low_db"], *(b.low_db for b in bands)])
        high = max([old["high_db"], *(b.high_db for b in bands)])
        changes.append(
            f"level range {old['low_db']:.2f}..{old['high_db']:.2f} -> {low:.2f}..{high:.2f} dB"
        )
        doc["level"] = {**old, "low_db": round(low, 2), "high_db": round(high, 2)}
    doc["threshold"] = threshold
    doc["adapted"] = {
        "from_sha256": model.sha256,
        "normal_files": [f.name for f in files],
        "learned_seconds": learned.seconds if learned else None,
        "threshold_before": model.threshold,
        "changes": changes,
    }
    _store(proto, doc)
    save_atomic(proto, args.output)
    ok, line = verify(args.output)
    if not ok:
        args.output.unlink(missing_ok=True)
        _LOGGER.error("%s", line)
        return EXIT_FAIL
    _LOGGER.info("adapt: folded in %s%s", where, " and the stream's learned values" * bool(learned))
    for change in changes:
        _LOGGER.info("adapt: %s", change)
    if threshold > SUSPECT_RATIO * model.threshold:
        _LOGGER.warning(
            "adapt: the threshold is now %.1fx the model's: what was marked normal sounds far "
            "from its training audio, and the adapted model may miss faults; if it is the "
            "machine's normal sound, train on it (--input-dir with the training audio)",
            threshold / model.threshold,
        )
    print(args.output)
    return EXIT_OK


def _store(proto: onnx.ModelProto, doc: dict[str, Any]) -> None:
    """doc as the model's metadata document."""
    kept = [e for e in proto.metadata_props if e.key != META_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(doc, sort_keys=True)
