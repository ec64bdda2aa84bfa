import csv
import json
import os
import signal
from pathlib import Path

import cv2
import numpy as np
import pytest
from torch.utils.data import DataLoader

import inference
from basics.images import VIDEO_EXTENSIONS, read_image
from conftest import (BROKEN_CHECKPOINTS, break_video_frame, run_cli, two_face_scene, write_broken_checkpoint,
                      write_video)
from dataset import LandmarkDataset, collate_readable
from inference import predict_dataset
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
    assert "the outputs of 3 input(s)" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == [f"val_000{i}{suffix}" for i in range(3)
                                                     for suffix in (".json", "_overlay.png")]
    for i in range(3):
        saved = load_result(out, f"val_000{i}")
        image = read_image(photos / f"val_000{i}.png")
        height, width = image.shape[:2]
        (face,) = saved["faces"]
        assert face["box"] == [-0.5, -0.5, width - 0.5, height - 0.5] and face["box_source"] == "whole image"
        assert np.shape(face["landmarks"]) == (8, 2) and len(saved["keypoint_names"]) == 8
        assert all(0.0 <= c <= 1.0 for c in face["confidence"])
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
        (face,) = saved["faces"]
        assert face["box_source"] == "--boxes" and saved["flip_test"] == flip_test
        np.testing.assert_allclose(face["box"], record["box"], atol=1e-3)
        np.testing.assert_allclose(face["landmarks"], points, atol=1e-3)
    assert load_result(out, Path(names[-1]).stem)["faces"][0]["box_source"] == "whole image"
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
    (a,), (b,) = (load_result(tmp_path / f"out_{n}", "face")["faces"] for n in "ab")
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
    assert predict.output_stems([tmp_path / "clip.v1.mp4", tmp_path / "clip.v2.mp4"]) == ["clip.v1", "clip.v2"]


# --- faces found by the detector, videos, region crops ---

class KnownFaces:
    """A stand-in for the detector that 'finds' given boxes: the tests of what follows detection."""

    def __init__(self, boxes: np.ndarray, scores: np.ndarray):
        self.boxes_found, self.scores = boxes, scores

    def boxes(self, images, threshold):
        keep = self.scores >= threshold
        return [(self.boxes_found[keep], self.scores[keep]) for _ in images]


def with_known_faces(monkeypatch, boxes: np.ndarray, scores: np.ndarray) -> None:
    monkeypatch.setattr(inference, "FaceDetector", lambda checkpoint, device: KnownFaces(boxes, scores))


def test_every_face_the_detector_finds_gets_its_landmarks(tiny_run, tiny_detector, tmp_path, monkeypatch):
    boxes, _ = two_face_scene(tiny_run["root"], tmp_path / "scene.png")
    with_known_faces(monkeypatch, np.concatenate([boxes, [[0, 0, 30, 30]]]), np.array([0.9, 0.8, 0.2]))
    predict_ok("--checkpoint", str(tiny_run["checkpoint"]), "--detector", str(tiny_detector), str(tmp_path / "scene.png"),
               "--out", str(tmp_path / "out"), "--device", "cpu", "--crop-regions", "--region-size", "48")
    result = load_result(tmp_path / "out", "scene")
    assert [face["score"] for face in result["faces"]] == [0.9, 0.8]  # the 0.2 is below --score-threshold 0.5
    for face, box in zip(result["faces"], boxes):
        assert face["box_source"] == "detector" and face["box"] == pytest.approx(box.tolist(), abs=1e-3)
        assert np.shape(face["landmarks"]) == (8, 2) and len(face["confidence"]) == 8
    regions = sorted(p.name for p in (tmp_path / "out" / "scene_regions").iterdir())
    assert regions == sorted(f"face{n}_{r}.png" for n in (1, 2) for r in ("ears", "eyes", "lower"))
    assert cv2.imread(str(tmp_path / "out" / "scene_regions" / "face2_eyes.png")).shape == (48, 48, 3)


def test_the_landmarks_of_a_found_face_are_those_of_its_box(tiny_run, tmp_path, monkeypatch):
    """With the detector's box equal to a given box, predict gives the same landmarks either way."""
    boxes, _ = two_face_scene(tiny_run["root"], tmp_path / "scene.png")
    predict_ok("--checkpoint", str(tiny_run["checkpoint"]), str(tmp_path / "scene.png"), "--bbox",
               ",".join(map(str, boxes[1])), "--out", str(tmp_path / "given"), "--device", "cpu")
    with_known_faces(monkeypatch, boxes[1:], np.array([0.7]))
    predict_ok("--checkpoint", str(tiny_run["checkpoint"]), "--detector", str(tiny_run["checkpoint"]),
               str(tmp_path / "scene.png"),
               "--out", str(tmp_path / "found"), "--device", "cpu")
    given, found = (load_result(tmp_path / name, "scene")["faces"][0] for name in ("given", "found"))
    np.testing.assert_allclose(found["landmarks"], given["landmarks"], atol=1e-4)


def moving_two_faces(root, frames: int = 8) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Frames of the two-face scene sliding right by 2 px a frame, and the two faces' boxes in each."""
    boxes, _ = two_face_scene(root, root / "scene.png")
    scene = read_image(root / "scene.png")
    canvas = np.zeros((scene.shape[0] + 20, scene.shape[1] + 40, 3), np.uint8)
    pictures, per_frame = [], []
    for t in range(frames):
        frame = canvas.copy()
        frame[10:10 + scene.shape[0], 10 + 2 * t:10 + 2 * t + scene.shape[1]] = scene
        pictures.append(frame)
        per_frame.append(boxes + np.array([10 + 2 * t, 10] * 2))
    return pictures, per_frame


def test_a_video_gives_a_row_per_frame_and_face_with_ids_that_follow_the_faces(tiny_run, tmp_path, monkeypatch):
    frames, boxes = moving_two_faces(tiny_run["root"])
    write_video(tmp_path / "clip.avi", frames)
    found = iter(boxes)
    monkeypatch.setattr(inference, "FaceDetector", lambda checkpoint, device: type("Moving", (), {
        "boxes": lambda self, images, threshold: [(next(found), np.array([0.9, 0.8])) for _ in images]})())
    predict_ok("--checkpoint", str(tiny_run["checkpoint"]), "--detector", str(tiny_run["checkpoint"]),
               str(tmp_path / "clip.avi"),
               "--out", str(tmp_path / "out"), "--device", "cpu", "--save-video")
    with open(tmp_path / "out" / "clip.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    keypoints = load_landmark_model(tiny_run["checkpoint"])[1]["keypoint_meta"]["keypoints"]
    assert list(rows[0]) == ["frame", "time_s", "face_id", "box_x1", "box_y1", "box_x2", "box_y2", "score",
                             *[f"{k}_{p}" for k in keypoints for p in ("x", "y", "conf")]]
    assert all(float(value) == float(value) for row in rows for value in row.values())  # every cell a number
    assert [int(row["frame"]) for row in rows] == [t for t in range(8) for _ in (0, 1)]
    by_id = {}
    for row in rows:
        by_id.setdefault(row["face_id"], []).append(float(row["box_x1"]))
    assert len(by_id) == 2 and all(np.allclose(np.diff(x), 2.0) for x in by_id.values())  # ids follow the faces
    assert sorted({float(row["time_s"]) for row in rows}) == pytest.approx(list(np.arange(8) / 10))
    assert cv2.VideoCapture(str(tmp_path / "out" / "clip_labelled.mp4")).get(cv2.CAP_PROP_FRAME_COUNT) == 8


def test_a_frame_that_cannot_be_decoded_is_skipped_counted_and_reported(tiny_run, tmp_path, capsys):
    frames, _ = moving_two_faces(tiny_run["root"], frames=6)
    video = write_video(tmp_path / "clip.avi", frames)
    break_video_frame(video, 3)
    assert predict.main(["--checkpoint", str(tiny_run["checkpoint"]), str(video), "--out", str(tmp_path / "out"),
                         "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert "5 frames, 5 with a face" in out
    assert f"warning: {video}: 1 frame(s) could not be decoded (rows without faces)" in err
    rows = [line.split(",") for line in (tmp_path / "out" / "clip.csv").read_text().splitlines()[1:]]
    assert [int(row[0]) for row in rows] == [0, 1, 2, 3, 4, 5]  # the whole frame is the face without a detector
    assert [row[2] for row in rows] == ["1", "1", "1", "", "1", "1"]  # frame 3: a row, no face


def test_a_broken_or_empty_video_is_one_line_and_the_rest_go_on(tiny_run, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(100))
    (tmp_path / "in" / "empty.avi").write_bytes(b"")
    (tmp_path / "in" / "face.png").write_bytes((tiny_run["root"] / "val" / "images" / "val_0000.png").read_bytes())
    assert predict.main(["--checkpoint", str(tiny_run["checkpoint"]), str(tmp_path / "in"), "--out",
                         str(tmp_path / "out"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert sum("broken.mp4: cannot open it as a video" in line for line in err) == 1
    assert sum("empty.avi: cannot open it as a video" in line for line in err) == 1
    assert (tmp_path / "out" / "face.json").exists() and "2 input(s) failed" in err[-1]


def test_checkpoints_of_the_wrong_kind_are_one_line(tiny_run, tiny_detector, tmp_path, capsys):
    image = str(tiny_run["root"] / "val" / "images" / "val_0000.png")
    assert predict.main(["--checkpoint", str(tiny_detector), image, "--out", str(tmp_path / "a")]) == 1
    assert "a face detector checkpoint, where a landmarks checkpoint" in capsys.readouterr().err
    assert predict.main(["--checkpoint", str(tiny_run["checkpoint"]), "--detector", str(tiny_run["checkpoint"]),
                         image, "--out", str(tmp_path / "b")]) == 1
    assert "a landmarks checkpoint, where a face detector checkpoint" in capsys.readouterr().err


def a_photo_and_a_video(tiny_run, folder: Path) -> Path:
    """A folder with one photo (face.png) and one 6-frame video (clip.avi)."""
    folder.mkdir()
    (folder / "face.png").write_bytes((tiny_run["root"] / "val" / "images" / "val_0000.png").read_bytes())
    write_video(folder / "clip.avi", moving_two_faces(tiny_run["root"], frames=6)[0])
    return folder


def test_finished_inputs_are_skipped_and_overwrite_redoes_them(tiny_run, tmp_path, capsys):
    inputs, out = a_photo_and_a_video(tiny_run, tmp_path / "in"), tmp_path / "out"
    args = ["--checkpoint", str(tiny_run["checkpoint"]), str(inputs), "--out", str(out), "--device", "cpu"]
    predict_ok(*args)
    face = (out / "face.json").read_bytes()
    (out / "clip.csv").write_text("kept\n")  # a result the user has, e.g. edited by hand
    capsys.readouterr()
    predict_ok(*args)
    said = capsys.readouterr().out
    assert f"{inputs / 'face.png'}: done already" in said and f"{inputs / 'clip.avi'}: done already" in said
    assert (out / "face.json").read_bytes() == face and (out / "clip.csv").read_text() == "kept\n"
    predict_ok(*args, "--overwrite")
    assert "faces" in load_result(out, "face") and (out / "clip.csv").read_text().startswith("frame,time_s")


def test_a_rerun_with_another_checkpoint_or_flags_says_what_differs_instead_of_skipping(tiny_run, tmp_path, capsys):
    inputs, out = a_photo_and_a_video(tiny_run, tmp_path / "in"), tmp_path / "out"
    args = ["--checkpoint", str(tiny_run["checkpoint"]), str(inputs), "--out", str(out), "--device", "cpu"]
    predict_ok(*args)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    other = tmp_path / "other.pth"
    other.write_bytes(tiny_run["checkpoint"].read_bytes() + b"\0")  # another file: another SHA-256
    capsys.readouterr()
    assert predict.main([*args[:1], str(other), *args[2:]]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: 2 input(s) have outputs from another checkpoint or other settings, e.g. {out / 'clip_summary.json'} "
        "(checkpoint_sha256); --overwrite redoes them, or write to another --out")
    assert predict.main([*args, "--flip-test", "--filter-window", "9"]) == 1
    assert f"{out / 'clip_summary.json'} (flip_test, filter_window)" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert load_result(out, "face")["produced_by"]["flip_test"] is False


def test_inputs_whose_outputs_would_share_a_name_are_refused_before_any_work(tiny_run, tmp_path, capsys):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    frames = moving_two_faces(tiny_run["root"], frames=4)[0]
    for name in ("clip.avi", "clip_dlc.avi"):
        write_video(inputs / name, frames)
    assert predict.main(["--checkpoint", str(tiny_run["checkpoint"]), str(inputs), "--out", str(out)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: {inputs / 'clip_dlc.avi'}'s output {out / 'clip_dlc.csv'}: is also written as "
        f"{inputs / 'clip.avi'}'s output; give them different names")
    assert list(out.iterdir()) == []


def test_the_input_folder_as_out_never_reads_its_own_overlays_as_photos(tiny_run, tmp_path, capsys):
    inputs = a_photo_and_a_video(tiny_run, tmp_path / "in")
    args = ["--checkpoint", str(tiny_run["checkpoint"]), str(inputs / "face.png"), "--out", str(inputs)]
    predict_ok(*args)
    capsys.readouterr()
    assert predict.main(["--checkpoint", str(tiny_run["checkpoint"]), str(inputs), "--out", str(inputs),
                         "--overwrite"]) == 1
    assert f"{inputs / 'face.png'}'s output {inputs / 'face_overlay.png'}: is an input" in capsys.readouterr().err
    assert not (inputs / "face_overlay_overlay.png").exists()


def test_a_name_too_long_for_the_file_system_is_shortened_stably_and_recorded_whole(tiny_run, tmp_path):
    name = "a" * 241 + ".avi"  # 245 characters: NAME_summary.json would pass the 255-byte limit
    video, out = write_video(tmp_path / name, moving_two_faces(tiny_run["root"], frames=4)[0]), tmp_path / "out"
    predict_ok("--checkpoint", str(tiny_run["checkpoint"]), str(video), "--out", str(out), "--device", "cpu")
    summaries = list(out.glob("*_summary.json"))
    assert len(summaries) == 1 and len(summaries[0].name.encode()) <= 255
    assert json.loads(summaries[0].read_text())["video"] == str(video)
    assert predict.output_stems([video]) == predict.output_stems([Path("elsewhere") / name])  # stable
    assert max(len(p.name) for p in out.iterdir()) <= 255


def test_an_interrupted_folder_run_keeps_finished_videos_leaves_nothing_of_the_unfinished_and_continues(
        tiny_run, tmp_path, monkeypatch, capsys):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    frames = moving_two_faces(tiny_run["root"], frames=6)[0]
    for name in ("a.avi", "b.avi", "c.avi"):
        write_video(inputs / name, frames)
    real_analyze, calls = predict.analyze_video, []

    def ctrl_c_during_the_second(path, *rest):
        calls.append(path.name)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # seen after its first batch of frames
        return real_analyze(path, *rest)
    monkeypatch.setattr(predict, "analyze_video", ctrl_c_during_the_second)
    args = ["--checkpoint", str(tiny_run["checkpoint"]), str(inputs), "--out", str(out), "--device", "cpu",
            "--batch-size", "2"]
    assert predict.main(args) == 130
    err = capsys.readouterr().err
    assert "1 input(s) done and complete" in err and f"not done (nothing of them written): {inputs / 'b.avi'}, " \
        f"{inputs / 'c.avi'}" in err
    assert sorted(p.name for p in out.iterdir()) == sorted(f"a{end}" for end in (
        ".csv", "_dlc.csv", "_filtered.csv", "_dlc_filtered.csv", "_summary.json"))  # no partial b, no staging left
    monkeypatch.undo()
    predict_ok(*args)  # the same command continues the folder
    said = capsys.readouterr().out
    assert f"{inputs / 'a.avi'}: done already" in said
    assert all((out / f"{name}_summary.json").exists() for name in "abc")
    rows = (out / "b.csv").read_text().splitlines()[1:]
    assert [int(row.split(",")[0]) for row in rows] == list(range(6))


def test_a_broken_video_of_the_same_name_leaves_the_good_ones_outputs_alone(tiny_run, tmp_path, capsys):
    video, out = tmp_path / "clip.avi", tmp_path / "out"
    write_video(video, moving_two_faces(tiny_run["root"], frames=6)[0])
    args = ["--checkpoint", str(tiny_run["checkpoint"]), str(video), "--out", str(out), "--device", "cpu"]
    predict_ok(*args, "--save-video")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(100))
    assert predict.main([*args, "--save-video", "--overwrite"]) == 1
    assert "clip.avi: cannot open it as a video" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and "clip_labelled.mp4" in before


def test_every_video_extension_in_a_folder_is_taken_as_a_video(tmp_path):
    for name in ("a.3gp", "b.ts", "c.MOV", "d.mkv", "e.JPG", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    files, problems = predict.list_inputs([str(tmp_path)])
    assert sorted(p.name for p in files) == ["a.3gp", "b.ts", "c.MOV", "d.mkv", "e.JPG"] and not problems
    assert {p.name for p in files if p.suffix.lower() in VIDEO_EXTENSIONS} == {"a.3gp", "b.ts", "c.MOV", "d.mkv"}


def test_a_photo_without_a_face_gets_its_json_and_no_regions_folder(tiny_run, tmp_path, monkeypatch):
    photo = tiny_run["root"] / "val" / "images" / "val_0000.png"
    monkeypatch.setattr(inference, "FaceDetector", lambda checkpoint, device: type("Nothing", (), {
        "boxes": lambda self, images, threshold: [(np.zeros((0, 4)), np.zeros(0)) for _ in images]})())
    predict_ok("--checkpoint", str(tiny_run["checkpoint"]), "--detector", str(tiny_run["checkpoint"]),
               str(photo), "--out",
               str(tmp_path / "out"), "--device", "cpu", "--crop-regions")
    assert load_result(tmp_path / "out", "val_0000")["faces"] == []
    assert not (tmp_path / "out" / "val_0000_regions").exists()


def test_a_box_with_negative_corners_is_a_box_not_a_flag():
    args = predict.parse_args(["--checkpoint", "lm.pth", "dog.jpg", "--bbox", "-20,-25,70,80", "--out", "o"])
    assert predict.parse_xyxy(args.bbox, "--bbox").tolist() == [-20, -25, 70, 80] and args.inputs == ["dog.jpg"]


def test_a_box_for_a_video_is_refused_in_one_line(tiny_run, tmp_path, capsys):
    video = write_video(tmp_path / "clip.avi", moving_two_faces(tiny_run["root"], frames=2)[0])
    assert predict.main(["--checkpoint", str(tiny_run["checkpoint"]), str(video), "--bbox", "1,2,30,40",
                         "--out", str(tmp_path / "out")]) == 1
    assert "--bbox and --boxes give the faces of photos, not of videos" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_video_where_no_face_is_found_has_a_row_per_frame_and_says_so(tiny_run, tmp_path, monkeypatch):
    video = write_video(tmp_path / "clip.avi", moving_two_faces(tiny_run["root"], frames=4)[0])
    monkeypatch.setattr(inference, "FaceDetector", lambda checkpoint, device: type("Nothing", (), {
        "boxes": lambda self, images, threshold: [(np.zeros((0, 4)), np.zeros(0)) for _ in images]})())
    predict_ok("--checkpoint", str(tiny_run["checkpoint"]), "--detector", str(tiny_run["checkpoint"]),
               str(video), "--out",
               str(tmp_path / "out"), "--device", "cpu")
    rows = [line.split(",") for line in (tmp_path / "out" / "clip.csv").read_text().splitlines()[1:]]
    assert [int(row[0]) for row in rows] == [0, 1, 2, 3] and all(row[2] == "" for row in rows)
    summary = json.loads((tmp_path / "out" / "clip_summary.json").read_text())
    assert summary["frames_read"] == 4 and summary["frames_with_a_face"] == 0


def test_a_full_disk_while_writing_a_video_s_tables_is_one_line_and_leaves_no_partial_file(tiny_run, tmp_path,
                                                                                           monkeypatch, capsys):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for name in ("a.avi", "b.avi"):
        write_video(inputs / name, moving_two_faces(tiny_run["root"], frames=4)[0])
    real_analyze = predict.analyze_video

    def disk_full_for_b(path, landmarker, staging, stem, *rest):
        if path.name == "b.avi":
            staging.path("b.csv").write_text("frame,")  # half a table, then the disk is full
            raise OSError(28, "No space left on device")
        return real_analyze(path, landmarker, staging, stem, *rest)
    monkeypatch.setattr(predict, "analyze_video", disk_full_for_b)
    assert predict.main(["--checkpoint", str(tiny_run["checkpoint"]), str(inputs), "--out", str(out),
                         "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert f"warning: {out / 'b'}: its outputs cannot be written (No space left on device); nothing of them" in err
    assert sorted(p.name for p in out.iterdir()) == sorted(f"a{end}" for end in (
        ".csv", "_dlc.csv", "_filtered.csv", "_dlc_filtered.csv", "_summary.json"))
