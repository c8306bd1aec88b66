"""Corrupt and foreign `.onnx` files and models with inconsistent metadata (DESIGN.md "Model
file"): the loader refuses each with one ModelError naming the file and the problem, and
`amulet-stream replay --model X good.wav` exits 2 with one error line, never a traceback.

The foreign graphs are built here with the `onnx` package, in tmp_path. The fuzzer (hypothesis,
AMULET_FUZZ_SECONDS, default 10 s) mutates the shipped model's metadata and bytes and replays
a generated wav with each in the RLIMIT_AS worker of test_fuzz_replay: refused (exit 2) or
replayed (exit 0), nothing else."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import strategies as st

from amulet_stream.audio.wav_write import write_wav
from amulet_stream.cli.main import main
from amulet_stream.scoring.model import Model, default_model_path
from amulet_stream.scoring.model_meta import ModelError
from amulet_stream.synth.motor import generate
from tests.fuzzing import fuzz_seconds, run_budget
from tests.test_fuzz_replay import ReplayWorker, check_replay

onnx = pytest.importorskip("onnx", reason="building foreign models needs the onnx package")
from onnx import TensorProto, helper  # noqa: E402

DIM = 320
"""Features per vector of the shipped model (logmel-v1)."""


def _doc() -> dict[str, Any]:
    """The shipped model's metadata document."""
    proto = onnx.load(str(default_model_path()))
    return dict(json.loads(proto.metadata_props[0].value))


def _save(path: Path, proto: Any, doc: dict[str, Any] | str | None) -> Path:
    """Write `proto` with `doc` (a dict as JSON, a str as is, None: no amulet metadata)."""
    del proto.metadata_props[:]
    if doc is not None:
        entry = proto.metadata_props.add()
        entry.key, entry.value = "amulet", doc if isinstance(doc, str) else json.dumps(doc)
    path.write_bytes(proto.SerializeToString())
    return path


def _graph(
    nodes: list[Any],
    inputs: list[Any] | None = None,
    outputs: list[Any] | None = None,
    opset: int = 18,
    initializers: list[Any] | None = None,
) -> Any:
    """A model from nodes; by default input features float (N, 320), output score float (N,)."""
    inputs = inputs or [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", DIM])]
    outputs = outputs or [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])]
    graph = helper.make_graph(nodes, "foreign", inputs, outputs, initializer=initializers or [])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _mean(inp: str = "features", out: str = "score") -> Any:
    """score = mean over the features axis (a working scorer)."""
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    return [helper.make_node("ReduceMean", [inp, "axes"], [out], keepdims=0)], [axes]


def _foreign() -> dict[str, tuple[Callable[[], Any], str]]:
    """Name -> (graph builder, part of the expected message)."""
    f = TensorProto.FLOAT
    nodes, init = _mean()
    return {
        "input named x": (
            lambda: _graph(
                _mean("x")[0],
                inputs=[helper.make_tensor_value_info("x", f, ["N", DIM])],
                initializers=init,
            ),
            "graph must take 'features'",
        ),
        "two inputs": (
            lambda: _graph(
                nodes,
                inputs=[
                    helper.make_tensor_value_info("features", f, ["N", DIM]),
                    helper.make_tensor_value_info("extra", f, ["N", DIM]),
                ],
                initializers=init,
            ),
            "graph must take 'features'",
        ),
        "output named out": (
            lambda: _graph(
                _mean(out="out")[0],
                outputs=[helper.make_tensor_value_info("out", f, ["N"])],
                initializers=init,
            ),
            "give 'score'",
        ),
        "double input": (
            lambda: _graph(
                nodes,
                inputs=[helper.make_tensor_value_info("features", TensorProto.DOUBLE, ["N", DIM])],
                outputs=[helper.make_tensor_value_info("score", TensorProto.DOUBLE, ["N"])],
                initializers=init,
            ),
            "must be float (N, D)",
        ),
        "10 features": (
            lambda: _graph(
                nodes,
                inputs=[helper.make_tensor_value_info("features", f, ["N", 10])],
                initializers=init,
            ),
            "graph input has 10 features",
        ),
        "fixed batch of 1": (
            lambda: _graph(
                nodes,
                inputs=[helper.make_tensor_value_info("features", f, [1, DIM])],
                outputs=[helper.make_tensor_value_info("score", f, [1])],
                initializers=init,
            ),
            "N free",
        ),
        "rank-3 input": (
            lambda: _graph(
                nodes,
                inputs=[helper.make_tensor_value_info("features", f, ["N", 1, DIM])],
                outputs=[helper.make_tensor_value_info("score", f, ["N", 1])],
                initializers=[helper.make_tensor("axes", TensorProto.INT64, [1], [2])],
            ),
            "must be float (N, D)",
        ),
        "two scores per row": (
            lambda: _graph(
                [
                    helper.make_node("Concat", ["m", "m"], ["score"], axis=1),
                    *_mean(out="m0")[0],
                    helper.make_node("Unsqueeze", ["m0", "one"], ["m"]),
                ],
                outputs=[helper.make_tensor_value_info("score", f, ["N", 2])],
                initializers=[*init, helper.make_tensor("one", TensorProto.INT64, [1], [1])],
            ),
            "not 32 finite scores",
        ),
        "NaN scores": (
            lambda: _graph(
                [*_mean(out="m")[0], helper.make_node("Div", ["m", "m"], ["score"])],
                initializers=init,
            ),
            "not 32 finite scores",
        ),
        "fails when run": (
            lambda: _graph(
                [helper.make_node("Reshape", ["features", "shape"], ["r"]), *_mean("r")[0]],
                initializers=[*init, helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 7])],
            ),
            "fails on a test batch",
        ),
        "opset 99": (lambda: _graph(nodes, opset=99, initializers=init), "not a valid ONNX model"),
        "external data /etc/passwd": (
            lambda: _external(),
            "not a valid ONNX model",
        ),
    }


def _external() -> Any:
    """A graph whose weight is 'stored' in /etc/passwd (ONNX external data)."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [DIM], np.zeros(DIM, np.float32))
    w.data_location = TensorProto.EXTERNAL
    del w.float_data[:]
    for key, value in (("location", "/etc/passwd"), ("offset", "0"), ("length", str(4 * DIM))):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    mul = helper.make_node("Mul", ["features", "w"], ["p"])
    nodes, init = _mean("p")
    return _graph([mul, *nodes], initializers=[w, *init])


def _metadata_cases() -> dict[str, tuple[Callable[[dict[str, Any]], Any], str]]:
    """Name -> (change to the metadata document, part of the expected message)."""

    def setp(key: str, value: Any) -> Callable[[dict[str, Any]], Any]:
        return lambda d: d["profile"].__setitem__(key, value)

    def sett(key: str, value: Any) -> Callable[[dict[str, Any]], Any]:
        return lambda d: d.__setitem__(key, value)

    return {
        "threshold missing": (lambda d: d.pop("threshold"), "lacks threshold"),
        "threshold NaN": (sett("threshold", float("nan")), "not a positive number"),
        "threshold infinite": (sett("threshold", float("inf")), "not a positive number"),
        "threshold negative": (sett("threshold", -0.3), "not a positive number"),
        "threshold 0": (sett("threshold", 0), "not a positive number"),
        "threshold string": (sett("threshold", "0.3"), "not a positive number"),
        "threshold true": (sett("threshold", True), "not a positive number"),
        "threshold null": (sett("threshold", None), "not a positive number"),
        "threshold 10^400": (sett("threshold", 10**400), "not a positive number"),
        "level 10^400": (sett("input_level_dbfs", {"p1": 10**400, "p99": 1}), "number too large"),
        "rate 10^400": (setp("rate", 10**400), "is not an integer (within"),
        "format version 2": (sett("format_version", 2), "format version 2"),
        "format version string": (sett("format_version", "1"), "format version '1'"),
        "profile unknown": (setp("name", "mel-v9"), "unknown feature profile 'mel-v9'"),
        "profile a list": (sett("profile", [1, 2]), "not a JSON object"),
        "profile name a list (fuzzer)": (setp("name", []), "name [] is not a string"),
        "profile extra key": (setp("colour", "blue"), "unknown parameters"),
        "sample rate 0": (setp("rate", 0), "inconsistent parameters"),
        "sample rate 10^9": (setp("rate", 10**9), "rate 1000000000 Hz"),
        "sample rate string": (setp("rate", "16000"), "rate '16000' is not an integer"),
        "sample rate float": (setp("rate", 16000.5), "is not an integer"),
        "n_fft 2^30": (setp("n_fft", 1 << 30), "n_fft"),
        "window 10^9": (setp("window", 10**9), "window"),
        "n_mels 10^6": (setp("n_mels", 10**6), "n_mels"),
        "frame_hop 0": (setp("frame_hop", 0), "inconsistent parameters"),
        "frame_hop 1": (setp("frame_hop", 1), "frames per second"),
        "stack 0": (setp("stack", 0), "inconsistent parameters"),
        "stft_size for logmel": (setp("stft_size", 512), "stft_size 512"),
        "pad_tail string": (setp("pad_tail", "yes"), "pad_tail"),
        "level range strings": (sett("input_level_dbfs", {"p1": "x", "p99": 1}), "input_level"),
        "level range reversed": (sett("input_level_dbfs", {"p1": -10, "p99": -20}), "p1 <= p99"),
    }


FOREIGN = _foreign()
METADATA = _metadata_cases()


@pytest.fixture(scope="module")
def good_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 s of generated motor sound at 16 kHz."""
    path = tmp_path_factory.mktemp("model") / "good.wav"
    write_wav(path, generate(3.0, 16000, seed=2), 16000)
    return path


def _cli(argv: list[str], capfd: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """cli.main in-process: exit code and stderr."""
    rc = main(argv)
    return rc, capfd.readouterr().err


def _assert_refused(path: Path, problem: str, wav: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Model(path) raises ModelError naming the file and `problem`; replay exits 2 with one
    line on stderr and nothing else."""
    with pytest.raises(ModelError) as err:
        Model(path)
    assert str(path) in str(err.value) and problem in str(err.value), err.value
    rc, stderr = _cli(["replay", "--model", str(path), str(wav), "--quiet"], capfd)
    lines = stderr.splitlines()  # captured at the file descriptor: onnxruntime's own logs too
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("amulet-stream: error:"), stderr
    assert problem in lines[0]


@pytest.mark.parametrize("name", FOREIGN)
def test_foreign_graph_is_refused(
    name: str, tmp_path: Path, good_wav: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    build, problem = FOREIGN[name]
    path = _save(tmp_path / "foreign.onnx", build(), _doc())
    _assert_refused(path, problem, good_wav, capfd)


@pytest.mark.parametrize("name", METADATA)
def test_inconsistent_metadata_is_refused(
    name: str, tmp_path: Path, good_wav: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    change, problem = METADATA[name]
    doc = _doc()
    change(doc)
    path = _save(tmp_path / "meta.onnx", onnx.load(str(default_model_path())), doc)
    _assert_refused(path, problem, good_wav, capfd)


def _files(tmp: Path) -> dict[str, tuple[Path, str]]:
    """Name -> (a file that is no model, part of the expected message)."""
    raw = default_model_path().read_bytes()
    proto = onnx.load(str(default_model_path()))
    out: dict[str, tuple[Path, str]] = {}
    for name, content, problem in [
        ("empty", b"", "empty file"),
        ("random bytes", np.random.default_rng(1).bytes(4096), "not a valid ONNX model"),
        ("text", b"threshold = 0.3\n", "not a valid ONNX model"),
        ("truncated to 10 %", raw[: len(raw) // 10], "not a valid ONNX model"),
        ("truncated to 99 %", raw[: len(raw) * 99 // 100], "not a valid ONNX model"),
    ]:
        path = tmp / f"{name}.onnx"
        path.write_bytes(content)
        out[name] = (path, problem)
    out["no amulet metadata"] = (_save(tmp / "plain.onnx", proto, None), "not an amulet model")
    out["metadata not JSON"] = (_save(tmp / "nj.onnx", proto, "{threshold: 0.3"), "not valid JSON")
    out["metadata a list"] = (_save(tmp / "list.onnx", proto, "[1, 2]"), "not a JSON object")
    deep = "[" * 100_000 + "]" * 100_000
    out["metadata nested 10^5 deep"] = (_save(tmp / "deep.onnx", proto, deep), "not valid JSON")
    flipped = bytearray(_save(tmp / "utf8.onnx", proto, json.dumps(_doc())).read_bytes())
    flipped[flipped.index(b'{"architecture"')] ^= 0x80  # found by the fuzzer: a UnicodeDecodeError
    (tmp / "utf8.onnx").write_bytes(bytes(flipped))
    out["metadata not UTF-8"] = (tmp / "utf8.onnx", "not a valid ONNX model")
    out["a directory"] = (tmp, "cannot read model")
    out["missing"] = (tmp / "missing.onnx", "No such file")
    out["/dev/zero"] = (Path("/dev/zero"), "not a regular file")
    return out


def test_corrupt_files_are_refused(
    tmp_path: Path, good_wav: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    for name, (path, problem) in _files(tmp_path).items():
        try:
            _assert_refused(path, problem, good_wav, capfd)
        except AssertionError as err:
            raise AssertionError(f"{name}: {err}") from err


@pytest.mark.parametrize("case", ["NaN scores", "truncated"])
def test_cli_subprocess_exit_2(case: str, tmp_path: Path, good_wav: Path) -> None:
    """The console script itself: exit 2, one error line naming the model, no traceback."""
    if case == "truncated":
        path = tmp_path / "cut.onnx"
        path.write_bytes(default_model_path().read_bytes()[:1000])
    else:
        path = _save(tmp_path / "nan.onnx", FOREIGN[case][0](), _doc())
    proc = subprocess.run(
        [Path(sys.executable).parent / "amulet-stream", "replay", "--model", path, good_wav],
        capture_output=True,
        text=True,
        timeout=120,
    )
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("amulet-stream: error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(errors) == 1 and str(path) in errors[0], proc.stderr


def test_shipped_model_still_loads() -> None:
    """The checks refuse none of the shipped model (and a working foreign graph with its
    metadata is accepted: the loader judges the contract, not the producer)."""
    model = Model(default_model_path())
    assert model.profile.dim == DIM and model.threshold > 0


# The fuzzer: metadata values replaced by random JSON, keys removed, bytes flipped or cut.
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.sampled_from([0, -1, 1, 2, 3, 512, 1024, 16000, 22050, 10**6, 2**31, 2**63, -(2**63)])
    | st.integers()
    | st.floats()
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=4,
)  # fmt: skip
TOP = ["format_version", "profile", "threshold", "threshold_method", "train_scores", "fingerprint",
       "versions", "parity", "input_level_dbfs", "scaler", "score", "architecture"]  # fmt: skip
PROFILE = ["name", "rate", "window", "hop", "offset", "n_fft", "frame_hop", "n_mels", "n_mfcc",
           "stack", "pad_tail", "stft_size"]  # fmt: skip
LEVELS = ["p1", "p99", "p50", "min", "max"]
DELETABLE = TOP + [f"profile.{k}" for k in PROFILE]
EDIT = st.one_of(
    st.tuples(st.just("top"), st.sampled_from(TOP), JSON),
    st.tuples(st.just("profile"), st.sampled_from(PROFILE), JSON),
    st.tuples(st.just("profile"), st.sampled_from(PROFILE), st.integers(-4, 70000)),
    st.tuples(st.just("levels"), st.sampled_from(LEVELS), JSON),
    st.tuples(st.just("delete"), st.sampled_from(DELETABLE), st.none()),
)  # fmt: skip
BYTES = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.integers(0, 1 << 20), st.none()),
)


def _edit(doc: dict[str, Any], edit: tuple[str, str, Any]) -> None:
    """Apply one metadata edit in place (edits inside a part an earlier edit replaced by a
    non-object are dropped)."""
    where, key, value = edit
    if where == "delete":
        part, _, key = key.rpartition(".")
        target = doc.get(part) if part else doc
        if isinstance(target, dict):
            target.pop(key, None)
        return
    target = {"top": doc, "profile": doc.get("profile"), "levels": doc.get("input_level_dbfs")}
    if isinstance(target[where], dict):
        target[where][key] = value


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplayWorker]:
    """The replay worker of test_fuzz_replay (RLIMIT_AS, time bound)."""
    w = ReplayWorker(tmp_path_factory.mktemp("model-worker") / "stderr.log")
    yield w
    w.close()


def test_fuzz_model(
    worker: ReplayWorker,
    good_wav: Path,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    proto = onnx.load(str(default_model_path()))
    path = tmp_path / "fuzz.onnx"
    codes: Counter[int] = Counter()

    def check(case: tuple[list[tuple[str, str, Any]], list[tuple[str, int, Any]]]) -> None:
        edits, byte_ops = case
        doc = _doc()
        for edit in edits:
            _edit(doc, edit)
        raw = _save(path, proto, json.dumps(doc)).read_bytes()
        for kind, at, value in byte_ops:
            at %= len(raw) + 1
            raw = (
                raw[:at] + bytes([raw[at] ^ value]) + raw[at + 1 :]
                if kind == "flip" and at < len(raw)
                else raw[:at]
            )
        path.write_bytes(raw)
        rc = check_replay(worker, good_wav, ["--model", str(path)])
        codes[rc] += 1

    strategy = st.tuples(st.lists(EDIT, min_size=1, max_size=3), st.lists(BYTES, max_size=1))
    n = run_budget(fuzz_seconds(10.0), 25, strategy, check)
    record_property("fuzz_model_inputs", n)
    print(
        f"fuzz model: {n} models (exit codes {dict(sorted(codes.items()))}: 0 replayed, "
        f"2 refused), 0 failures, worker peak RSS {worker.max_rss_kb / 1024:.0f} MiB"
    )
    assert n >= 25 and codes[2] > 0
