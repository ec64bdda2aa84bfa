import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from torch.utils.data import DataLoader

from conftest import BROKEN_CHECKPOINTS, run_cli, write_broken_checkpoint
from dataset import LandmarkDataset, collate_readable, read_image
from evaluate import predict_dataset
from model import load_landmark_model
from tools import predict


def predict_ok(*args: str) -> None:
    assert predict.main(list(args)) == 0


def load_result(out_dir, stem: str) -> dict:
    return json.loads((out_dir / f"{stem}.json").read_text())


def test_folder_with_a_corrupt_file_and_a_missing_path(tiny_run, tmp_path):
    """Without a box the whole image is the face box; bad inputs get a line each and exit 1."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("val_0000.png", "val_0001.png", "val_0002.png"):
        (photos / name).write_bytes((tiny_run["root"] / "val" / "images" / name).read_bytes())
    (photos / "corrupt.png").write_bytes(np.random.default_rng(0).bytes(3000))
    out = tmp_path / "out"
    result = run_cli("tools/predict.py", "--checkpoint", str(tiny_run["checkpoint"]), str(photos),
                     str(tmp_path / "missing.jpg"), "--out", str(out), "--device", "cpu", "--batch-size", "2",
                     check=False)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert any("corrupt.png" in line and "cannot read image" in line for line in lines)
    assert any("missing.jpg" in line and "no such file" in line for line in lines)
    assert lines[-1].startswith("error: 2 input(s) failed")
    assert "for 3 image(s)" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == [f"val_000{i}{suffix}" for i in range(3)
                                                     for suffix in (".json", "_overlay.png")]
    for i in range(3):
        saved = load_result(out, f"val_000{i}")
        image = read_image(photos / f"val_000{i}.png")
        height, width = image.shape[:2]
        assert saved["box"] == [-0.5, -0.5, width - 0.5, height - 0.5] and saved["box_source"] == "whole image"
        assert np.shape(saved["landmarks"]) == (8, 2) and len(saved["keypoint_names"]) == 8
        assert all(0.0 <= c <= 1.0 for c in saved["confidence"])
        assert cv2.imread(str(out / f"val_000{i}_overlay.png")).shape == (800, 800, 3)  # enlarged to draw on


@pytest.mark.parametrize("flip_test", [False, True])
def test_boxes_json_gives_the_evaluator_landmarks_in_original_pixels(tiny_run, tmp_path, capsys, flip_test):
    """With the annotated boxes, predict.py and evaluate.py see the same crops and must agree.
    The last image is left out of boxes.json: its whole image is the box, with a warning."""
    model, _, crop = load_landmark_model(tiny_run["checkpoint"])
    dataset = LandmarkDataset(tiny_run["ann"] / "val.json", None, crop.input_size, padding=crop.box_padding)
    flip_index = dataset.meta["flip_index"] if flip_test else None
    expected, _, _ = predict_dataset(model, DataLoader(dataset, batch_size=4, collate_fn=collate_readable),
                                     "cpu", flip_index)
    boxes = tmp_path / "boxes.json"
    names = [Path(r["file"]).name for r in dataset.records]
    boxes.write_text(json.dumps({name: r["box"].tolist() for name, r in zip(names[:-1], dataset.records)}))
    out = tmp_path / "out"
    predict_ok("--checkpoint", str(tiny_run["checkpoint"]), str(tiny_run["root"] / "val" / "images"),
               "--boxes", str(boxes), "--out", str(out), "--device", "cpu", "--batch-size", "3",
               *(["--flip-test"] if flip_test else []))
    for name, record, points in zip(names[:-1], dataset.records, expected):
        saved = load_result(out, Path(name).stem)
        assert saved["box_source"] == "--boxes" and saved["flip_test"] == flip_test
        np.testing.assert_allclose(saved["box"], record["box"])
        np.testing.assert_allclose(saved["landmarks"], points, atol=1e-3)
    assert load_result(out, Path(names[-1]).stem)["box_source"] == "whole image"
    assert f"{names[-1]}: not in {boxes}" in capsys.readouterr().err


def test_bbox_follows_the_face_when_the_photo_is_shifted(tiny_run, tmp_path):
    """Pad the photo on the left and top: the same box moved by the padding gives the same
    landmarks moved by the padding, so they are in original-image pixels."""
    image = cv2.imread(str(tiny_run["root"] / "val" / "images" / "val_0003.png"))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cv2.imwrite(str(tmp_path / "a" / "face.png"), image)
    cv2.imwrite(str(tmp_path / "b" / "face.png"), cv2.copyMakeBorder(image, 7, 0, 13, 0, cv2.BORDER_CONSTANT))
    predict_ok("--checkpoint", str(tiny_run["checkpoint"]), str(tmp_path / "a" / "face.png"),
               "--bbox", "10,12.5,60,70", "--out", str(tmp_path / "out_a"), "--device", "cpu")
    predict_ok("--checkpoint", str(tiny_run["checkpoint"]), str(tmp_path / "b" / "face.png"),
               "--bbox", "23,19.5,73,77", "--out", str(tmp_path / "out_b"), "--device", "cpu")
    a, b = load_result(tmp_path / "out_a", "face"), load_result(tmp_path / "out_b", "face")
    assert a["box_source"] == "--bbox" and a["box"] == [10, 12.5, 60, 70]
    np.testing.assert_allclose(np.array(b["landmarks"]) - a["landmarks"], np.tile([13, 7], (8, 1)), atol=0.02)


@pytest.mark.parametrize("args, message", [
    (["--bbox", "1,2,3"], "--bbox: a box must be four numbers"),
    (["--bbox", "5,2,3,9"], "x1 < x2"),
    (["--boxes", "BOXES"], "must be a JSON object"),
])
def test_bad_boxes_give_one_error_line(tiny_run, tmp_path, capsys, args, message):
    boxes = tmp_path / "boxes.json"
    boxes.write_text("[[1, 2, 3, 4]]")
    args = [str(boxes) if a == "BOXES" else a for a in args]
    assert predict.main(["--checkpoint", str(tiny_run["checkpoint"]), str(tmp_path), "--out",
                         str(tmp_path / "out"), *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_missing_checkpoint_gives_one_error_line(tmp_path, capsys):
    assert predict.main(["--checkpoint", str(tmp_path / "nope.pth"), str(tmp_path), "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope.pth'}: no such checkpoint file"


@pytest.mark.parametrize("kind", BROKEN_CHECKPOINTS)
def test_broken_checkpoint_gives_one_error_line(tiny_run, tmp_path, capsys, kind):
    path = write_broken_checkpoint(tmp_path / "best.pth", kind, tiny_run["checkpoint"])
    images = str(tiny_run["root"] / "val" / "images")
    assert predict.main(["--checkpoint", str(path), images, "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: ")


def test_repeated_file_names_get_distinct_outputs(tmp_path):
    paths = [tmp_path / "a" / "x.png", tmp_path / "b" / "x.jpg", tmp_path / "y.png", tmp_path / "c" / "x.png"]
    assert predict.output_stems(paths) == ["x", "x-2", "y", "x-3"]


def test_every_input_gets_its_own_outputs_whatever_the_names(tiny_run, tmp_path):
    """x.png in two folders and an x-2.png beside one of them: three inputs, three sets of outputs."""
    source = tiny_run["root"] / "val" / "images"
    for folder, name, image in (("a", "x.png", "val_0000.png"), ("a", "x-2.png", "val_0001.png"),
                                ("b", "x.png", "val_0002.png")):
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / name).write_bytes((source / image).read_bytes())
    out = tmp_path / "out"
    predict_ok("--checkpoint", str(tiny_run["checkpoint"]), str(tmp_path / "a"), str(tmp_path / "b"),
               "--out", str(out), "--device", "cpu")
    written = {load_result(out, p.stem)["image"] for p in out.glob("*.json")}
    assert written == {str(tmp_path / "a" / "x.png"), str(tmp_path / "a" / "x-2.png"), str(tmp_path / "b" / "x.png")}
    assert len(list(out.glob("*_overlay.png"))) == 3
    assert predict.output_stems([tmp_path / "x.png", tmp_path / "X.jpg"]) == ["x", "X-2"]  # case-blind file systems
