"""verify and the runtime loader refuse files that are not complete amulet models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from amulet_export.cli import main
from amulet_stream.scoring.model import Model
from amulet_stream.scoring.model_meta import ModelError


def _plain_onnx(path: Path, meta: dict[str, str] | None = None, dim: int = 3) -> Path:
    inp = helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, dim])
    out = helper.make_tensor_value_info("score", TensorProto.FLOAT, [None])
    node = helper.make_node("ReduceMean", ["features"], ["score"], axes=[1], keepdims=0)
    model = helper.make_model(
        helper.make_graph([node], "g", [inp], [out]), opset_imports=[helper.make_opsetid("", 13)]
    )
    for k, v in (meta or {}).items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, path)
    return path


def test_non_amulet_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "model.onnx"
    text.write_text("hello")
    assert main(["verify", str(text)]) == 1
    assert "not a valid ONNX model" in capsys.readouterr().out
    plain = _plain_onnx(tmp_path / "plain.onnx")
    assert main(["verify", str(plain)]) == 1
    assert "not an amulet model (no 'amulet' metadata)" in capsys.readouterr().out
    partial = _plain_onnx(tmp_path / "partial.onnx", {"amulet": json.dumps({"format_version": 1})})
    with pytest.raises(ModelError, match="lacks profile, threshold"):
        Model(partial)
    with pytest.raises(ModelError, match="cannot read model"):
        Model(tmp_path / "absent.onnx")


def test_tampered_parity_fails(
    seed_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "seed.onnx"
    assert main(["import-seed", str(seed_dir / "example_model"), "-o", str(good)]) == 0
    proto = onnx.load(good)
    doc = json.loads(proto.metadata_props[0].value)
    doc["parity"]["scores"] = (np.asarray(doc["parity"]["scores"]) + 0.01).tolist()
    proto.metadata_props[0].value = json.dumps(doc)
    bad = tmp_path / "tampered.onnx"
    onnx.save(proto, bad)
    capsys.readouterr()
    assert main(["verify", str(bad)]) == 1
    assert "parity sample differs by 1.00e-02" in capsys.readouterr().out
    doc["profile"]["dim_typo"] = 1
    proto.metadata_props[0].value = json.dumps(doc)
    onnx.save(proto, bad)
    with pytest.raises(ModelError, match="unknown parameters"):
        Model(bad)
