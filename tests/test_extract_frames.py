import json
import os
import signal
from pathlib import Path

import numpy as np
import torch

import train_simple
from basics.images import read_image
from conftest import write_video
from inference import landmarker_from_args
from tools import convert_dogflw_to_coco, extract_frames


def four_scene_video(root: Path, path: Path) -> Path:
    """A 20-frame video of four val faces, five frames each."""
    faces = [read_image(root / "val" / "images" / f"val_000{i}.png") for i in range(4)]
    return write_video(path, [face for face in faces for _ in range(5)])


def extract(tiny_run, video: Path, out: Path, *flags: str) -> None:
    assert extract_frames.main([str(video), "--checkpoint", str(tiny_run["checkpoint"]), "--out", str(out),
                                "--device", "cpu", *flags]) == 0


def test_spread_frames_give_every_scene_of_the_video_a_frame(tiny_run, tmp_path):
    video = four_scene_video(tiny_run["root"], tmp_path / "clip.avi")
    assert sorted(p // 5 for p in extract_frames.spread_frames(video, 4, seed=0)) == [0, 1, 2, 3]


def test_with_a_table_the_frames_most_likely_wrong_are_picked(tmp_path):
    table = tmp_path / "clip.csv"
    names = [f"k{k}_{p}" for k in range(2) for p in ("x", "y", "conf")]
    rows = ["frame,time_s,face_id,box_x1,box_y1,box_x2,box_y2,score," + ",".join(names)]
    for frame in range(12):
        jump = 30.0 if frame == 4 else 0.0  # frame 4's landmarks jump, frame 8 is unsure, frame 10 has no face
        conf = 0.2 if frame == 8 else 0.9
        if frame == 10:
            rows.append(f"{frame},{frame / 10},," + "," * (4 + len(names)))
            continue
        rows.append(f"{frame},{frame / 10},1,0,0,100,100,0.9,"
                    f"{10 + frame + jump},20,{conf},{50 + frame + jump},20,{conf}")
    table.write_text("\n".join(rows) + "\n")
    assert extract_frames.doubtful_frames(table, 3, min_gap=2) == [4, 8, 10]


def test_the_landmarks_filled_in_can_be_placed_with_the_flip_test_and_refined(tiny_run, tmp_path, monkeypatch):
    video, out, built = four_scene_video(tiny_run["root"], tmp_path / "clip.avi"), tmp_path / "to_label", []

    def recording(args):
        built.append(landmarker_from_args(args))
        return built[-1]
    monkeypatch.setattr(extract_frames, "landmarker_from_args", recording)
    extract(tiny_run, video, out, "--frames", "2", "--flip-test", "--refine", "2")
    (landmarker,) = built
    assert landmarker.refine == 2 and landmarker.predictor.flip_index == landmarker.predictor.meta["flip_index"]
    assert len(list((out / "train" / "labels").iterdir())) == 2


def test_extracted_frames_convert_back_both_ways_and_train_from_the_model(tiny_run, tmp_path, capsys):
    video = four_scene_video(tiny_run["root"], tmp_path / "clip.avi")
    out = tmp_path / "to_label"
    extract(tiny_run, video, out, "--frames", "4")
    labels = sorted((out / "train" / "labels").iterdir())
    assert len(labels) == len(list((out / "train" / "images").iterdir())) == 4
    coco = json.loads((out / "annotations.json").read_text())
    category = coco["categories"][0]
    assert category["keypoints"] == json.loads((out / "meta.json").read_text())["keypoints"] and category["skeleton"]
    assert len(coco["images"]) == len(coco["annotations"]) == 4  # without a detector, the whole frame is the face

    layout, cvat = tmp_path / "ann_layout", tmp_path / "ann_cvat"  # the corrected set comes back either way
    assert convert_dogflw_to_coco.main(["--dogflw-root", str(out), "--meta", str(out / "meta.json"),
                                        "--out-dir", str(layout)]) == 0
    assert convert_dogflw_to_coco.main(["--coco", str(out / "annotations.json"), "--images",
                                        str(out / "train" / "images"), "--meta", str(out / "meta.json"),
                                        "--out-dir", str(cvat)]) == 0
    back = [json.loads((folder / "train.json").read_text()) for folder in (layout, cvat)]
    assert [len(b["annotations"]) for b in back] == [4, 4]
    points = [np.array(b["annotations"][0]["keypoints"]).reshape(-1, 3)[:, :2] for b in back]
    assert np.allclose(points[0], points[1], atol=0.01)  # the same landmarks through both formats

    run = tmp_path / "run"
    capsys.readouterr()
    assert train_simple.main(["--ann-root", str(tiny_run["ann"]), "--extra-train", str(layout / "train.json"),
                              "--init-from", str(tiny_run["checkpoint"]), "--backbone", "resnet18",
                              "--input-size", "64", "--no-pretrained", "--batch-size", "4", "--num-workers", "0",
                              "--epochs", "1", "--work-dir", str(run)]) == 0
    assert "20 train / 8 val images" in capsys.readouterr().out  # the original 16 and the 4 corrected frames
    assert torch.load(run / "best.pth", weights_only=True)["model"]


def test_frames_go_to_a_new_folder_only(tiny_run, tmp_path, capsys):
    video = four_scene_video(tiny_run["root"], tmp_path / "clip.avi")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "corrected.json").write_text("{}")
    assert extract_frames.main([str(video), "--checkpoint", str(tiny_run["checkpoint"]), "--out",
                                str(tmp_path / "old")]) == 1
    assert "exists and is not empty" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "old").iterdir()] == ["corrected.json"]


def test_a_missing_table_names_itself_before_any_work(tiny_run, tmp_path, capsys):
    video = four_scene_video(tiny_run["root"], tmp_path / "clip.avi")
    assert extract_frames.main([str(video), "--checkpoint", str(tiny_run["checkpoint"]), "--out",
                                str(tmp_path / "new"), "--tables", str(tmp_path)]) == 1
    assert f"{tmp_path / 'clip.csv'}: no prediction table" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_sigterm_while_writing_frames_leaves_no_partial_folder_and_one_line(tiny_run, tmp_path, capsys, monkeypatch):
    video = four_scene_video(tiny_run["root"], tmp_path / "clip.avi")
    real_imwrite, written = extract_frames.cv2.imwrite, []

    def terminated_at_the_second_frame(path, image):
        written.append(path)
        if len(written) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # a job scheduler's stop
        return real_imwrite(path, image)
    monkeypatch.setattr(extract_frames.cv2, "imwrite", terminated_at_the_second_frame)
    assert extract_frames.main([str(video), "--checkpoint", str(tiny_run["checkpoint"]), "--out", str(tmp_path / "out"),
                                "--device", "cpu", "--frames", "4"]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "interrupted by SIGTERM"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.avi"]  # no out, no .out.partial-PID
