"""Synthetic faces in DogFLW's on-disk layout, made fresh for each test session.

Each image shows a face-like ellipse with one coloured disc per landmark. Landmarks that
mirror each other (flip_index) share a colour, as left and right eyes look alike, so the
task is learnable with flip augmentation. The pose (rotation, scale, position) varies.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from basics.coco_files import DOGFLW_META
from tools.gpu_check import symmetric_template

SMALL_META = {  # 8 landmarks: two eyes, two ears, nose, two mouth corners, chin
    "name": "toy", "num_keypoints": 8,
    "keypoints": ["eye_l", "eye_r", "ear_l", "ear_r", "nose", "mouth_l", "mouth_r", "chin"],
    "flip_index": [1, 0, 3, 2, 4, 6, 5, 7], "iod_pair": [0, 1],
    "regions": {"eyes": [0, 1], "ears": [2, 3], "lower": [4, 5, 6, 7]},
}


def palette(flip_index: list[int]) -> dict[int, tuple[int, int, int]]:
    """One RGB colour per mirror class of landmarks."""
    rng = np.random.default_rng(7)
    classes = sorted({min(i, j) for i, j in enumerate(flip_index)})
    return {c: tuple(int(v) for v in rng.integers(60, 256, size=3)) for c in classes}


def make_faces(root: Path, splits: dict[str, int], meta: dict, image_size: int = 96, seed: int = 0,
               rotation: float = 25.0) -> Path:
    """Write root/<split>/{images,labels}/ with PNGs and DogFLW-style labels; returns root."""
    rng = np.random.default_rng(seed)
    flip_index = meta["flip_index"]
    template = symmetric_template(flip_index, np.random.default_rng(1))
    colours = palette(flip_index)
    for split, count in splits.items():
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "labels").mkdir(parents=True, exist_ok=True)
        for n in range(count):
            angle = math.radians(rng.uniform(-rotation, rotation))
            scale = rng.uniform(0.25, 0.38) * image_size
            center = rng.uniform(0.4, 0.6, size=2) * image_size
            rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
            jitter = rng.normal(0, 0.03, size=template.shape)
            points = (template + jitter) @ rot.T * scale + center
            image = rng.integers(0, 50, size=(image_size, image_size, 3), dtype=np.uint8)
            cv2.ellipse(image, tuple(int(v) for v in center), (int(scale * 1.1), int(scale * 1.1)),
                        0, 0, 360, (90, 70, 50), -1)
            radius = max(2, image_size // 40)
            for i, (x, y) in enumerate(points):
                colour = colours[min(i, flip_index[i])]
                cv2.circle(image, (int(round(x)), int(round(y))), radius, colour, -1)
            x1, y1 = points.min(axis=0) - 0.1 * scale
            x2, y2 = points.max(axis=0) + 0.1 * scale
            name = f"{split}_{n:04d}"
            cv2.imwrite(str(root / split / "images" / f"{name}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            label = {"landmarks": points.round(2).tolist(),
                     "bounding_boxes": [f"{v:.2f}" for v in (x1, y1, x2, y2)]}
            (root / split / "labels" / f"{name}.json").write_text(json.dumps(label))
    return root


BROKEN_CHECKPOINTS = ("truncated", "foreign", "text")


def write_broken_checkpoint(path: Path, kind: str, good: Path) -> Path:
    """A .pth that must be refused: the first 4 KB of a good one, someone else's state dict, or text."""
    import torch

    if kind == "truncated":
        path.write_bytes(good.read_bytes()[:4096])
    elif kind == "foreign":
        torch.save({"state_dict": torch.load(good, weights_only=False)["model"]}, path)
    else:
        path.write_text("not a checkpoint")
    return path


def run_cli(*args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a project script as a user would, from the repository root (with `env` added to the
    environment)."""
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, timeout=600)  # a hang fails
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


# train_simple.py in a process that sends itself a signal as the step of the given number begins
SIGNAL_AT_STEP = """
import os, sys
import train_simple
at_step, signal_number, argv = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
real_step, steps = train_simple.train_step, []

def signalling_step(*args):
    steps.append(1)
    if len(steps) == at_step:
        os.kill(os.getpid(), signal_number)
    return real_step(*args)

train_simple.train_step = signalling_step
sys.exit(train_simple.main(argv))
"""


@pytest.fixture(scope="session")
def dogflw_root(tmp_path_factory) -> Path:
    """A tiny DogFLW: 46 landmarks, train/ and test/ splits."""
    return make_faces(tmp_path_factory.mktemp("dogflw"), {"train": 24, "test": 8}, DOGFLW_META)


@pytest.fixture(scope="session")
def small_meta_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("meta") / "meta.json"
    path.write_text(json.dumps(SMALL_META))
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> dict[str, Path]:
    """A real one-epoch run on small synthetic faces (SMALL_META, 64 px crops): the faces' root,
    the annotation folder and the run folder with best.pth and metrics.jsonl."""
    import train_simple
    from basics.dogflw import convert

    base = tmp_path_factory.mktemp("tiny_run")
    root = make_faces(base / "faces", {"train": 16, "val": 8}, SMALL_META, image_size=80)
    convert(root, base / "ann", SMALL_META)
    train_simple.train(train_simple.parse_args([
        "--ann-root", str(base / "ann"), "--backbone", "resnet18", "--input-size", "64", "--no-pretrained",
        "--batch-size", "8", "--num-workers", "0", "--epochs", "1", "--work-dir", str(base / "run")]))
    return {"root": root, "ann": base / "ann", "run": base / "run", "checkpoint": base / "run" / "best.pth"}


# a landmark run small enough for a test: 64 px crops of a random resnet18, no worker processes
SMALL_RUN = ["--backbone", "resnet18", "--input-size", "64", "--no-pretrained", "--batch-size", "8",
             "--num-workers", "0"]


@pytest.fixture(scope="session")
def toy_ann(tmp_path_factory) -> Path:
    """48 training faces (12 batches of 4 per epoch) and 8 validation faces, 8 landmarks."""
    from basics.dogflw import convert
    root = make_faces(tmp_path_factory.mktemp("toy"), {"train": 48, "val": 8}, SMALL_META)
    convert(root, root / "ann", SMALL_META)
    return root / "ann"


def toy_args(ann: Path, run: Path, *extra: str) -> list[str]:
    """train_simple.py's flags for 3 epochs of SMALL_RUN in batches of 4 on `ann`, into `run`."""
    return ["--ann-root", str(ann), *SMALL_RUN, "--batch-size", "4", "--epochs", "3", "--work-dir", str(run), *extra]


@pytest.fixture(scope="session")
def uninterrupted_run(toy_ann, tmp_path_factory) -> Path:
    """The folder of a 3-epoch run on toy_ann that nothing disturbed."""
    run = tmp_path_factory.mktemp("uninterrupted")
    run_cli("train_simple.py", *toy_args(toy_ann, run))
    return run


def two_face_scene(root: Path, out: Path, names=("val_0000", "val_0001")) -> tuple[np.ndarray, np.ndarray]:
    """A picture of two face images of `root`'s val split side by side, 8 px apart, written to
    `out`; returns their boxes (2, 4) and landmarks (2, K, 2) in it."""
    faces = [cv2.imread(str(root / "val" / "images" / f"{name}.png")) for name in names]
    labels = [json.loads((root / "val" / "labels" / f"{name}.json").read_text()) for name in names]
    side = faces[0].shape[0]
    scene = np.zeros((side, 2 * side + 8, 3), dtype=np.uint8)
    scene[:, :side], scene[:, side + 8:] = faces
    cv2.imwrite(str(out), scene)
    shift = np.array([[0.0, 0.0], [side + 8.0, 0.0]])
    boxes = np.array([[float(v) for v in label["bounding_boxes"]] for label in labels]) + np.tile(shift, 2)
    landmarks = np.array([label["landmarks"] for label in labels]) + shift[:, None, :]
    return boxes, landmarks


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> Path:
    """An MJPEG AVI of RGB frames (every frame a JPEG of its own, so one can be broken on purpose)."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def break_video_frame(path: Path, index: int) -> None:
    """Blank frame `index`'s JPEG data in an MJPEG AVI (not the container's bytes around it, nor the
    next frame), so that this frame alone cannot be decoded."""
    data = bytearray(path.read_bytes())
    markers = lambda second: [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == second]  # noqa
    start = markers(0xD8)[index]  # the frame's start-of-image marker
    end = next(i for i in markers(0xD9) if i > start)  # and its end-of-image marker
    data[start + 2:end] = bytes(end - start - 2)
    path.write_bytes(bytes(data))


@pytest.fixture(scope="session")
def tiny_detector(tiny_run, tmp_path_factory) -> Path:
    """best.pth of a one-epoch detector run on the tiny faces (it need not find them well)."""
    from detector import train as train_detector
    run = tmp_path_factory.mktemp("tiny_detector") / "run"
    assert train_detector.main(["--ann-root", str(tiny_run["ann"]), "--no-pretrained", "--epochs", "1",
                                "--batch-size", "4", "--num-workers", "0", "--min-size", "64", "--max-size", "96",
                                "--work-dir", str(run)]) == 0
    return run / "best.pth"


@pytest.fixture(scope="session")
def toy_train_json(tmp_path_factory) -> Path:
    """train.json of 6 small faces (SMALL_META, 128 px images) beside a val.json of 2."""
    from basics.dogflw import convert
    root = make_faces(tmp_path_factory.mktemp("toy"), {"train": 6, "val": 2}, SMALL_META, image_size=128)
    convert(root, root / "ann", SMALL_META)
    return root / "ann" / "train.json"


def coco_copy(ann_file: Path, tmp_path: Path, change) -> Path:
    """A copy of a COCO file with `change(coco)` applied."""
    coco = json.loads(ann_file.read_text())
    change(coco)
    path = tmp_path / "changed.json"
    path.write_text(json.dumps(coco))
    return path
