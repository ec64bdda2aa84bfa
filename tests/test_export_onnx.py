import re
import sys

import numpy as np
import pytest
import torch

from dataset import LandmarkDataset
from model import load_landmark_model
from tools import export_onnx

onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime)")
pytest.importorskip("onnx", reason="the onnx package is not installed (pip install onnx)")


def test_export_matches_pytorch_at_another_batch_size(tiny_run, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert export_onnx.main(["--checkpoint", str(tiny_run["checkpoint"]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    reported = float(re.search(r"max \|difference\| (\S+) px", printed).group(1))
    assert reported <= export_onnx.TOLERANCE_PX

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 3, 64, 64]
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["input_size"] == "64" and meta["box_padding"] == "1.25"
    model, _, _ = load_landmark_model(tiny_run["checkpoint"])
    dataset = LandmarkDataset(tiny_run["ann"] / "val.json", None, 64)
    images = torch.stack([dataset[i]["image"] for i in range(2)]).float()  # real crops, batch of 2
    points, confidence = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        expected_points, expected_confidence = model.predict(images)
    assert points.shape == (2, 8, 2) and confidence.shape == (2, 8)
    np.testing.assert_allclose(points, expected_points.numpy(), atol=1e-3)
    np.testing.assert_allclose(confidence, expected_confidence.numpy(), atol=1e-4)


def test_without_onnxruntime_it_says_how_to_install_it(tiny_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    assert export_onnx.main(["--checkpoint", str(tiny_run["checkpoint"]), "--out", str(tmp_path / "m.onnx")]) == 1
    assert "pip install onnxruntime" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # an export that cannot be checked is not written


def test_a_failed_check_writes_nothing_and_keeps_the_previous_file(tiny_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"a good model from before")
    monkeypatch.setattr(export_onnx, "max_difference", lambda *args: (0.5, 0.0))
    assert export_onnx.main(["--checkpoint", str(tiny_run["checkpoint"]), "--out", str(out), "--overwrite"]) == 1
    assert "differs from PyTorch by more than" in capsys.readouterr().err
    assert out.read_bytes() == b"a good model from before" and sorted(tmp_path.iterdir()) == [out]


def test_the_checkpoint_is_never_the_output(tiny_run, tmp_path, capsys):
    copy = tmp_path / "best.pth"
    copy.write_bytes(tiny_run["checkpoint"].read_bytes())
    assert export_onnx.main(["--checkpoint", str(copy), "--out", str(copy), "--overwrite"]) == 1
    assert capsys.readouterr().err.strip() == (f"error: --out {copy}: is --checkpoint, which this command reads; "
                                               "write it elsewhere")
    assert copy.read_bytes() == tiny_run["checkpoint"].read_bytes()


def test_an_existing_file_is_replaced_only_with_overwrite(tiny_run, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("a user's notes")
    assert export_onnx.main(["--checkpoint", str(tiny_run["checkpoint"]), "--out", str(notes)]) == 1
    assert capsys.readouterr().err.strip() == (f"error: --out {notes}: exists; give --overwrite to replace it, or "
                                               "write elsewhere")
    assert notes.read_text() == "a user's notes" and sorted(tmp_path.iterdir()) == [notes]
