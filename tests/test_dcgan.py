"""AMULET's DCGAN candidate: mfcc-image-v1 features, images, tiny training, ONNX models."""

from __future__ import annotations

import io
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import onnx
import pytest
import scipy.fft
from onnx import TensorProto, helper, numpy_helper

from amulet_export import dcgan, dcgan_images, dcgan_onnx
from amulet_export.errors import InputError
from amulet_export.onnx_io import ort_scores
from amulet_export.verify import verify
from amulet_stream.audio.sources import FileSource
from amulet_stream.audio.wav import read_info
from amulet_stream.audio.wav_write import write_wav
from amulet_stream.scoring.features import MFCC_IMAGE_V1, PROFILES
from amulet_stream.scoring.filters import dct2_matrix
from amulet_stream.scoring.frames import VectorStream
from amulet_stream.scoring.model import INPUT_NAME, OUTPUT_NAME, Model
from amulet_stream.scoring.pipeline import StreamPipeline
from amulet_stream.synth.motor import generate

RATE = 22050
POSITIONS = [(0, 0), (1, 0), (2, 21), (5, 43), (10, 10), (19, 43)]
"""(MFCC coefficient, STFT column) pairs checked; columns 0 and 43 depend on the padding."""
LIBROSA = [
    [-106.7308, 179.9966, -39.6941, -14.4987, 8.1362, 3.5023],
    [-90.9472, 190.3957, 7.198, 36.1898, -38.1489, 5.6233],
]
"""librosa 0.10.2 in a throwaway venv, librosa.feature.mfcc(y=tone()[s*22050:(s+1)*22050],
sr=22050, pad_mode="reflect") (librosa 0.7.2's defaults, AMULET's DCGAN environment) for
seconds s = 0, 1 at POSITIONS, rounded to 4 places."""


def tone() -> np.ndarray:
    """Two seconds of two steady tones and a chirp at 22050 Hz, float32."""
    t = np.arange(2 * RATE) / RATE
    x = (
        0.5 * np.sin(2 * np.pi * 440.0 * t)
        + 0.2 * np.sin(2 * np.pi * 1234.5 * t)
        + 0.1 * np.sin(2 * np.pi * (100.0 * t + 1500.0 * t * t))
    )
    return x.astype(np.float32)


def test_profile_is_one_second_of_20_by_44_mfcc() -> None:
    p = MFCC_IMAGE_V1
    assert PROFILES["mfcc-image-v1"] is p
    assert (p.step, p.span, p.vectors, p.hop_vectors, p.dim) == (22050, 22050, 1, 1, 880)


def test_dct2_matrix_is_scipy_ortho_dct2() -> None:
    x = np.random.default_rng(1).standard_normal((7, 128))
    expected = scipy.fft.dct(x, type=2, norm="ortho", axis=1)[:, :20]
    np.testing.assert_allclose(x @ dct2_matrix(128, 20).T, expected, atol=1e-10)


def test_features_match_librosa_mfcc() -> None:
    stream = VectorStream(MFCC_IMAGE_V1)
    x = tone()
    vectors = np.concatenate([stream.push(x[i : i + 3000]) for i in range(0, x.size, 3000)])
    assert vectors.shape == (2, 880)
    got = vectors.reshape(2, 20, 44)[:, [c for c, _ in POSITIONS], [k for _, k in POSITIONS]]
    np.testing.assert_allclose(got, LIBROSA, atol=2e-3)


def test_images_are_what_imsave_writes() -> None:
    stream = VectorStream(MFCC_IMAGE_V1)
    rng = np.random.default_rng(2)
    mats = np.concatenate(
        [
            stream.push(tone()),
            rng.standard_normal((3, 880)).astype(np.float32) * np.float32(60) - 200,
            np.full((1, 880), 3.0, np.float32),  # flat: every pixel gets the first colour
        ]
    )
    ours = dcgan_images.viridis_bytes()[dcgan_images.colour_index(mats)].reshape(-1, 20, 44, 3)
    for m, mine in zip(mats, ours, strict=True):
        png = io.BytesIO()
        plt.imsave(png, m.reshape(20, 44), format="png")
        written = np.round(plt.imread(io.BytesIO(png.getvalue()))[..., :3] * 255)
        np.testing.assert_array_equal(mine, written)
    img = dcgan_images.images(mats)
    assert img.shape == (6, 20, 44, 3) and img.min() >= -1.0 and img.max() <= 1.0


def test_onnx_colour_index_is_exact_at_level_boundaries() -> None:
    nodes, inits, colour = dcgan_onnx._colour_nodes("table")
    inits.append(numpy_helper.from_array(np.arange(256, dtype=np.float32), "table"))
    graph = helper.make_graph(
        [*nodes, helper.make_node("Identity", [colour], [OUTPUT_NAME])],
        "colour_index",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 880])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", 880])],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    rng = np.random.default_rng(3)
    rows = [rng.standard_normal(880) * 10 ** rng.uniform(-3, 3) for _ in range(64)]
    for lo, span in ((-300.0, 417.3), (0.1, 1e-3), (7.0, 0.0)):  # values on every level edge
        rows.append(lo + span * np.resize(np.arange(257) / 256, 880))
    x = np.asarray(rows, np.float32)
    levels = ort_scores(proto, x).reshape(x.shape)
    np.testing.assert_array_equal(levels, dcgan_images.colour_index(x))
    assert levels[-3:-1].min() == 0 and levels[-3:-1].max() == 255 and levels[-1].max() == 0


@pytest.fixture(scope="module")
def wavs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Generated healthy training audio (two files) and a 5.5 s test file at 16 kHz."""
    d = tmp_path_factory.mktemp("dcgan_audio")
    paths = {}
    for name, seconds, rate, seed in (
        ("a", 12.0, RATE, 21),
        ("b", 8.0, 16000, 22),
        ("t", 5.5, 16000, 23),
    ):
        paths[name] = d / f"{name}.wav"
        write_wav(paths[name], generate(seconds, rate, seed=seed), rate)
    return paths


@pytest.fixture(scope="module")
def models(wavs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both rules from one tiny training run (2 epochs)."""
    out = tmp_path_factory.mktemp("dcgan_models")
    dirs = {rule: out / name for rule, name in dcgan.RULES.items()}
    return dcgan.train_dcgan_rules([wavs["a"], wavs["b"]], dirs, epochs=2, seed=10)


@pytest.mark.parametrize("rule", list(dcgan.RULES))
def test_model_loads_verifies_and_scores_each_second(
    rule: str, models: dict[str, Path], wavs: dict[str, Path]
) -> None:
    path = models[rule]
    assert path.name == "model.onnx"
    ok, line = verify(path)
    assert ok, line
    model = Model(path)
    meta = model.meta.raw
    assert model.profile == MFCC_IMAGE_V1 and meta["architecture"] == dcgan.RULES[rule]
    assert meta["threshold_method"] == ("max" if rule == "amulet" else "gamma")
    assert meta["parity"]["max_abs_diff"] <= 1e-5
    assert meta["training"]["epochs"] == 2 and meta["training"]["images"] == 15
    info = read_info(wavs["t"])
    pipe = StreamPipeline(model, info.rate, "t", str(wavs["t"]))
    records = [r for b in FileSource(info, None).blocks() for r in pipe.feed(b)]
    records += pipe.finish()
    scores = [r for r in records if r["event"] == "score"]
    assert [(r["start"], r["end"]) for r in scores] == [(s, s + 1.0) for s in range(5)]
    assert all(np.isfinite(r["score"]) for r in scores)
    summary = json.loads((path.parent / "summary.json").read_text())
    assert summary["threshold"] == model.threshold


def test_amulet_rule_graph_is_exact(models: dict[str, Path]) -> None:
    proto = onnx.load(models["amulet"])
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    x = np.random.default_rng(4).standard_normal((40, 880)).astype(np.float32) * 50
    x[0] = 0.0
    expected = dcgan_images.amulet_scores(x, inits["grey_sample"])
    np.testing.assert_array_equal(Model(models["amulet"]).score_vectors(x), expected)


def test_train_dcgan_entry_point(wavs: dict[str, Path], tmp_path: Path) -> None:
    path = dcgan.train_dcgan([wavs["a"]], tmp_path / "out", rule="discriminator", epochs=1)
    assert path == tmp_path / "out" / "model.onnx"
    assert Model(path).meta.threshold_method == "gamma"
    with pytest.raises(ValueError, match="unknown DCGAN scoring rule"):
        dcgan.train_dcgan([wavs["a"]], tmp_path / "x", rule="closest")
    short = []
    for i in range(3):  # one whole second each: all of it is held out
        short.append(tmp_path / f"short{i}.wav")
        write_wav(short[-1], generate(1.5, RATE, seed=30 + i), RATE)
    with pytest.raises(InputError, match="too little audio for the DCGAN"):
        dcgan.train_dcgan(short, tmp_path / "y")
    assert not (tmp_path / "y").exists()
