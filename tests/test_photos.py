import json

import cv2
import numpy as np
import pytest

from analysis.photos import PhotoOptions, analyze_photos, given_box
from basics.errors import Interrupted
from basics.run_utils import StopRequest
from inference import FaceLandmarker, LandmarkPredictor


def test_a_photos_box_comes_from_bbox_else_the_table_by_path_or_name_else_the_landmarker(tmp_path, capsys):
    box = np.array([1.0, 2.0, 30.0, 40.0])
    table = {str(tmp_path / "a.png"): box, "b.png": box + 1}
    assert given_box(tmp_path / "c.png", PhotoOptions("lm.pth", bbox=box + 2, box_table=table))[1] == "--bbox"
    with_table = PhotoOptions("lm.pth", box_table=table, boxes_file="boxes.json")
    assert given_box(tmp_path / "a.png", with_table)[1] == "--boxes"
    found, source = given_box(tmp_path / "sub" / "b.png", with_table)
    assert source == "--boxes" and found.tolist() == (box + 1).tolist()
    assert given_box(tmp_path / "c.png", with_table) == (None, "whole image")
    assert f"{tmp_path / 'c.png'}: not in boxes.json; the whole image is its face box" in capsys.readouterr().err
    detected = PhotoOptions("lm.pth", detector="det.pth", box_table=table, boxes_file="boxes.json")
    assert given_box(tmp_path / "c.png", detected) == (None, "detector")
    assert "the detector finds its faces" in capsys.readouterr().err


def test_each_readable_photo_gets_its_json_overlay_and_regions_and_an_unreadable_one_a_problem(tiny_run, tmp_path):
    photo, broken, out = tiny_run["root"] / "val" / "images" / "val_0000.png", tmp_path / "broken.png", tmp_path / "out"
    broken.write_bytes(b"not a png")
    out.mkdir()
    landmarker = FaceLandmarker(LandmarkPredictor(tiny_run["checkpoint"], "cpu"))
    options = PhotoOptions(str(tiny_run["checkpoint"]), batch_size=1, regions_size=24)
    problems, done = [], []
    with StopRequest() as stop:
        analyze_photos([(broken, "broken"), (photo, "face")], landmarker, out, options, problems, stop, done)
    assert done == [photo] and len(problems) == 1 and "broken.png" in problems[0]
    assert sorted(p.name for p in out.iterdir()) == ["face.json", "face_overlay.png", "face_regions"]
    saved = json.loads((out / "face.json").read_text())
    assert saved["image"] == str(photo) and saved["checkpoint"] == str(tiny_run["checkpoint"])
    assert saved["detector"] is None and saved["flip_test"] is False
    (face,) = saved["faces"]
    assert face["box_source"] == "whole image" and np.shape(face["landmarks"]) == (8, 2)
    assert cv2.imread(str(out / "face_regions" / "face1_eyes.png")).shape == (24, 24, 3)


def test_a_stop_request_stops_before_the_next_batch(tiny_run, tmp_path):
    photo = tiny_run["root"] / "val" / "images" / "val_0000.png"
    landmarker = FaceLandmarker(LandmarkPredictor(tiny_run["checkpoint"], "cpu"))
    stop, done = StopRequest(), []
    stop.signal_name = "SIGTERM"
    with pytest.raises(Interrupted, match="SIGTERM while predicting photos"):
        analyze_photos([(photo, "face")], landmarker, tmp_path, PhotoOptions("lm.pth"), [], stop, done)
    assert done == [] and not any(tmp_path.iterdir())
