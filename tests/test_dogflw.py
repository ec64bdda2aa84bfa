import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from basics.coco_files import DOGFLW_META
from basics.dogflw import LabelError, convert
from basics.errors import DataError
from conftest import REPO, SMALL_META, make_faces, palette, run_cli
from dataset import LandmarkDataset
from tools import convert_dogflw_to_coco as convert_mod


@pytest.fixture
def root(tmp_path):
    return make_faces(tmp_path / "dogflw", {"train": 5, "test": 3}, DOGFLW_META)


def label_path(root, split, n):
    return root / split / "labels" / f"{split}_{n:04d}.json"


def test_converts_each_split_with_string_boxes(root, tmp_path):
    counts = convert(root, tmp_path / "ann", DOGFLW_META)
    assert counts == {"train": 5, "test": 3}
    coco = json.loads((tmp_path / "ann" / "train.json").read_text())
    label = json.loads(label_path(root, "train", 0).read_text())
    assert isinstance(label["bounding_boxes"][0], str)
    x1, y1, x2, y2 = (float(v) for v in label["bounding_boxes"])
    ann = coco["annotations"][0]
    assert ann["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1])
    assert ann["keypoints"][:3] == pytest.approx([*label["landmarks"][0], 2])
    assert len(ann["keypoints"]) == 46 * 3
    category = coco["categories"][0]
    assert category["flip_index"] == DOGFLW_META["flip_index"] and category["iod_pair"] == [18, 19]
    assert coco["images"][0]["file_name"] == "train/images/train_0000.png"
    assert coco["info"]["data_root"] == str(root.resolve())


def test_labels_key_and_other_meta(tmp_path, small_meta_file):
    root = make_faces(tmp_path / "toy", {"train": 2, "val": 2}, SMALL_META)
    path = label_path(root, "val", 1)
    label = json.loads(path.read_text())
    path.write_text(json.dumps({"labels": label["landmarks"], "bounding_boxes": label["bounding_boxes"]}))
    run_cli("tools/convert_dogflw_to_coco.py", "--dogflw_root", str(root), "--meta", str(small_meta_file),
            "--out_dir", str(tmp_path / "ann"))
    coco = json.loads((tmp_path / "ann" / "val.json").read_text())
    assert len(coco["annotations"]) == 2 and coco["categories"][0]["regions"] == SMALL_META["regions"]
    assert coco["categories"][0]["keypoints"] == SMALL_META["keypoints"]


BAD_LABELS = {
    "wrong point count": ({"landmarks": [[1, 2]] * 45, "bounding_boxes": ["0", "0", "9", "9"]}, "has 45 landmarks"),
    "text value": ({"landmarks": [[1, 2]] * 45 + [["a", 2]], "bounding_boxes": [0, 0, 9, 9]}, "not a number"),
    "no landmarks": ({"bounding_boxes": [0, 0, 9, 9]}, "no 'landmarks'"),
}


@pytest.mark.parametrize("case", sorted(BAD_LABELS))
def test_bad_label_is_skipped_with_its_file_named(root, tmp_path, capsys, case):
    label, reason = BAD_LABELS[case]
    bad = label_path(root, "train", 2)
    bad.write_text(json.dumps(label))
    counts = convert(root, tmp_path / "ann", DOGFLW_META)
    assert counts["train"] == 4
    err = capsys.readouterr().err
    assert f"{bad}: " in err and reason in err


@pytest.mark.parametrize("value", ["nan", float("nan"), float("inf"), None, "-inf"])
def test_a_non_finite_or_missing_landmark_is_unlabelled_and_the_image_stays(root, tmp_path, capsys, value):
    """As in the real DogFLW label n02099712_4074, whose landmark 43 is NaN."""
    path = label_path(root, "train", 2)
    label = json.loads(path.read_text())
    label["landmarks"][43] = [value, label["landmarks"][43][1]]
    path.write_text(json.dumps(label))  # json writes NaN and Infinity as the real file does
    assert convert(root, tmp_path / "ann", DOGFLW_META)["train"] == 5
    assert f"{path}: landmark 43 is " in capsys.readouterr().err
    annotation = json.loads((tmp_path / "ann" / "train.json").read_text())["annotations"][2]
    assert annotation["keypoints"][43 * 3:43 * 3 + 3] == [0.0, 0.0, 0] and annotation["num_keypoints"] == 45


def test_two_images_of_one_name_are_reported_not_guessed(root, tmp_path, capsys):
    image = root / "train" / "images" / "train_0001.png"
    Image.open(image).save(image.with_suffix(".jpg"))
    assert convert(root, tmp_path / "ann", DOGFLW_META)["train"] == 4
    err = capsys.readouterr().err
    assert "train_0001.json: one label for the images train_0001.jpg, train_0001.png" in err


def test_missing_files_and_unreadable_image_are_reported(root, tmp_path, capsys):
    label_path(root, "train", 0).unlink()
    (root / "train" / "images" / "train_0001.png").unlink()
    (root / "train" / "images" / "train_0002.png").write_bytes(b"\x89PNG not really")
    label_path(root, "train", 3).write_bytes(b"\xff\xfe\x00garbage")
    counts = convert(root, tmp_path / "ann", DOGFLW_META)
    assert counts["train"] == 1
    err = capsys.readouterr().err
    assert "train_0000.png: image without label" in err
    assert "train_0001.json: label without image" in err
    assert "train_0002.png: unreadable image" in err
    assert "train_0003.json: not readable JSON" in err


def test_strict_exits_non_zero_and_writes_nothing(root, tmp_path):
    out = tmp_path / "ann"
    out.mkdir()
    (out / "train.json").write_text("previous")
    label_path(root, "test", 0).write_text("{")
    result = run_cli("tools/convert_dogflw_to_coco.py", "--dogflw_root", str(root), "--out_dir", str(out),
                     "--strict", "--overwrite", check=False)
    assert result.returncode != 0
    assert "test_0000.json" in result.stderr and "nothing written" in result.stderr
    assert (out / "train.json").read_text() == "previous"
    assert sorted(p.name for p in out.iterdir()) == ["train.json"]


def test_write_failure_leaves_no_partial_file(root, tmp_path, monkeypatch):
    def explode(path, text, encoding=None):
        open(path, "w").write(text[:20])
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(pathlib.Path, "write_text", explode)
    with pytest.raises(DataError, match="test.json: cannot write it .No space left on device"):
        convert(root, tmp_path / "ann", DOGFLW_META)
    monkeypatch.undo()
    assert list((tmp_path / "ann").iterdir()) == []


def test_download_finds_the_dataset_folder(tmp_path, monkeypatch):
    kagglehub = pytest.importorskip("kagglehub")
    nested = tmp_path / "cache" / "versions" / "3" / "DogFLW"
    (nested / "train").mkdir(parents=True)
    (nested / "test").mkdir()
    monkeypatch.setattr(kagglehub, "dataset_download", lambda handle: str(tmp_path / "cache"))
    assert convert_mod.download_dogflw() == nested


def test_download_failure_says_what_to_do(monkeypatch):
    kagglehub = pytest.importorskip("kagglehub")

    def offline(handle):
        raise ConnectionError("no network")
    monkeypatch.setattr(kagglehub, "dataset_download", offline)
    with pytest.raises(LabelError, match="--dogflw_root"):
        convert_mod.download_dogflw()


def test_empty_root_is_an_error(tmp_path):
    result = run_cli("tools/convert_dogflw_to_coco.py", "--dogflw_root", str(tmp_path), check=False)
    assert result.returncode == 1 and "no split folder" in result.stderr


def fuzzed_label(valid: dict, rng) -> bytes:
    """A label file that is wrong in one random way (bytes, JSON shape, types, values)."""
    label = json.loads(json.dumps(valid))
    k = int(rng.integers(len(label["landmarks"])))
    point_breakers = ["12", None, [1.0], [1.0, 2.0, 3.0], {"x": 1}, [True, 1.0], ["abc", 1.0],
                      [float("inf"), 1.0], [float("nan"), 1.0], [10**400, 1.0], [1e300, 5.0], [[1.0], 2.0]]
    box_breakers = [[0, 0, 9], [0, 0, 9, 9, 9], ["a", "0", "9", "9"], ["9", "0", "1", "9"], ["1e999", 0, 9, 9],
                    None, {"x1": 0}, "0 0 9 9", [0, 0, 9, 1e300], []]
    kind = rng.integers(9)
    if kind == 0:
        return b""
    if kind == 1:
        return b"\xff" + rng.bytes(int(rng.integers(1, 64)))  # never valid UTF-8
    if kind == 2:
        text = json.dumps(label)
        return text[: int(rng.integers(1, len(text) - 1))].encode()  # truncated object
    if kind == 3:
        return json.dumps([None, 3, "label", label["landmarks"]][int(rng.integers(4))]).encode()
    if kind == 4:
        del label[["landmarks", "bounding_boxes"][int(rng.integers(2))]]
    elif kind == 5:
        label["landmarks"][k] = point_breakers[int(rng.integers(len(point_breakers)))]
    elif kind == 6:
        label["bounding_boxes"] = box_breakers[int(rng.integers(len(box_breakers)))]
    elif kind == 7:
        label["landmarks"] = label["landmarks"][: int(rng.integers(len(label["landmarks"])))]
    else:
        return ("[" * 100_000 + "]" * 100_000).encode()
    return json.dumps(label).encode()


def test_fuzzed_labels_are_skipped_with_a_reason_never_a_traceback(tmp_path, capsys):
    import numpy as np
    rng = np.random.default_rng(2026)
    root = make_faces(tmp_path / "fuzz", {"train": 64, "test": 2}, SMALL_META)
    fuzzed = [label_path(root, "train", n) for n in range(4, 64)]
    for path in fuzzed:
        path.write_bytes(fuzzed_label(json.loads(path.read_text()), rng))
    counts = convert(root, tmp_path / "ann", SMALL_META)
    problems = capsys.readouterr().err.strip().splitlines()
    assert {line.split(": ")[0] for line in problems} == {str(p) for p in fuzzed}  # each named, none twice left out
    kept_notes = ("repaired from the landmarks", "marked not labelled", "put in order", "cut at its edge")
    left_out = [line for line in problems if not any(note in line for note in kept_notes)]
    assert len({line.split(": ")[0] for line in left_out}) == len(left_out)
    kept = len(fuzzed) - len(left_out)  # a broken box (repaired) or a non-finite point (unlabelled): kept
    assert kept > 0 and counts == {"train": 4 + kept, "test": 2}
    assert len(json.loads((tmp_path / "ann" / "train.json").read_text())["annotations"]) == 4 + kept

    out = tmp_path / "strict"
    code = convert_mod.main(["--dogflw_root", str(root), "--meta", str(write_meta(tmp_path, SMALL_META)),
                             "--out_dir", str(out), "--strict"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("error: ") and "nothing written" in err[-1]
    assert not out.exists() or list(out.iterdir()) == []


def write_meta(tmp_path, meta: dict):
    path = tmp_path / "meta.json"
    path.write_text(json.dumps(meta))
    return path


def test_far_outside_coordinates_are_skipped(root, tmp_path, capsys):
    path = label_path(root, "train", 1)
    label = json.loads(path.read_text())
    label["landmarks"][5] = [1e12, 3.0]
    path.write_text(json.dumps(label))
    assert convert(root, tmp_path / "ann", DOGFLW_META)["train"] == 4
    assert f"{path}: point (1e+12, 3) lies far outside" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    ({"flip_index": [1, 0, 3, 2, 4, 6, 5, 5]}, "not a permutation"),
    ({"flip_index": [1, 2, 0, 3, 4, 6, 5, 7]}, "own inverse"),
    ({"iod_pair": [0, 99]}, "iod_pair"),
    ({"regions": {"eyes": [0, 42]}}, "region 'eyes'"),
    ({"keypoints": ["a", "b"]}, "2 keypoint names"),
])
def test_bad_meta_file_is_refused_before_converting(root, tmp_path, capsys, change, message):
    meta = write_meta(tmp_path, {**SMALL_META, **change})
    code = convert_mod.main(["--dogflw_root", str(root), "--meta", str(meta), "--out_dir", str(tmp_path / "ann")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and message in err[0] and str(meta) in err[0]
    assert not (tmp_path / "ann").exists()


def test_visibility_is_kept_from_triples_or_a_visibility_list(tmp_path):
    root = make_faces(tmp_path / "toy", {"train": 3, "val": 1}, SMALL_META)
    for n, style in ((0, "triples"), (1, "list")):
        path = label_path(root, "train", n)
        label = json.loads(path.read_text())
        flags = [2, 2, 0, 1, 2, 2, 2, 2]
        if style == "triples":
            label["landmarks"] = [[x, y, f] if f else [None, None, 0] for (x, y), f in zip(label["landmarks"], flags)]
        else:
            label["visibility"] = flags
        path.write_text(json.dumps(label))
    convert(root, tmp_path / "ann", SMALL_META)
    annotations = json.loads((tmp_path / "ann" / "train.json").read_text())["annotations"]
    for annotation in annotations[:2]:
        assert annotation["keypoints"][2::3] == [2, 2, 0, 1, 2, 2, 2, 2] and annotation["keypoints"][6:8] == [0, 0]
        assert annotation["num_keypoints"] == 7
    assert annotations[2]["keypoints"][2::3] == [2] * 8


def test_an_exif_rotated_jpeg_is_measured_as_displayed_and_cropped_upright(tmp_path):
    """Labels are in the image as displayed. The converter checks them against the displayed size
    (not the stored one), and the crop shows each landmark's disc under it."""
    root = make_faces(tmp_path / "toy", {"train": 2, "val": 1}, SMALL_META, image_size=96)
    image_path = root / "train" / "images" / "train_0000.png"
    upright = np.asarray(Image.open(image_path).convert("RGB"))
    upright = np.concatenate([upright, np.zeros((64, 96, 3), np.uint8)])  # 96 wide, 160 tall as displayed
    exif = Image.new("RGB", (1, 1)).getexif()
    exif[0x0112] = 6  # stored turned a quarter left; displayed turned back
    Image.fromarray(np.ascontiguousarray(np.rot90(upright))).save(root / "train" / "images" / "train_0000.jpg",
                                                                  exif=exif, quality=98)
    image_path.unlink()
    convert(root, tmp_path / "ann", SMALL_META)
    coco = json.loads((tmp_path / "ann" / "train.json").read_text())
    assert (coco["images"][0]["width"], coco["images"][0]["height"]) == (96, 160)
    sample = LandmarkDataset(tmp_path / "ann" / "train.json", None, 96)[0]
    colours = palette(SMALL_META["flip_index"])
    crop = sample["image"].permute(1, 2, 0).numpy().astype(int)
    for i, (x, y) in enumerate(sample["keypoints"].numpy()):
        assert np.abs(crop[round(y), round(x)] - colours[min(i, SMALL_META["flip_index"][i])]).max() <= 40, i


@pytest.mark.parametrize("box, problem", [
    ([0, 0, 9], "box is not 4 values"),
    (["a", 0, 9, 9], "box is not a number"),
    ([0, 0, 0, 50], "box has zero size"),
    (["80", "70", "10", "5"], None),  # inverted corners: put in order, and it fits the face
    ([500, 500, 600, 600], "lies outside the 96x96 image"),
    ([0, 0, 20, 20], "misses the face (0 of 46 landmarks in it"),
    ([-5000, -5000, 5000, 5000], "times the landmarks' extent (at most 4)"),  # a forged box on the image
    ("most inside", "misses the face (44 of 46 landmarks in it, 2 far outside)"),  # grown by a quarter it held them
])
def test_a_box_that_cannot_be_trusted_is_repaired_from_the_landmarks(root, tmp_path, capsys, box, problem):
    path = label_path(root, "test", 1)
    label = json.loads(path.read_text())
    good = [float(v) for v in label["bounding_boxes"]]
    if problem is None:
        box = [good[2], good[3], good[0], good[1]]
    if box == "most inside":
        points = np.array(label["landmarks"])
        side = good[2] - good[0]
        label["landmarks"][0] = [good[0] - 0.2 * side, points[0][1]]  # two points a fifth of the box outside
        label["landmarks"][1] = [good[2] + 0.2 * side, points[1][1]]
        box = good
    label["bounding_boxes"] = box
    path.write_text(json.dumps(label))
    assert convert(root, tmp_path / "ann", DOGFLW_META)["test"] == 3  # the test split keeps every image
    err = capsys.readouterr().err
    bbox = json.loads((tmp_path / "ann" / "test.json").read_text())["annotations"][1]["bbox"]
    x1, y1, w, h = bbox
    if problem is None:
        assert f"{path}: box" in err and "has its corners inverted: put in order" in err
        assert [x1, y1, x1 + w, y1 + h] == pytest.approx(good)
    elif box is good:  # the two moved points widen the landmarks' extent
        assert f"{path}: " in err and problem in err and "repaired from the landmarks" in err
    else:
        assert f"{path}: " in err and problem in err and "repaired from the landmarks" in err
        # padded around the landmarks as the split's good boxes are (make_faces pads by 10 % of the face)
        assert [x1, y1, x1 + w, y1 + h] == pytest.approx(good, abs=2.0)


def test_a_box_past_the_image_edge_is_cut_there_and_reported(root, tmp_path, capsys):
    path = label_path(root, "train", 3)
    label = json.loads(path.read_text())
    x1, y1, x2, y2 = (float(v) for v in label["bounding_boxes"])
    label["bounding_boxes"] = [x1, y1, 96 + 0.3 * (x2 - x1), y2]  # the face fits, the box reaches past the right edge
    path.write_text(json.dumps(label))
    convert(root, tmp_path / "ann", DOGFLW_META)
    out, err = capsys.readouterr()
    assert f"{path}: box" in err and "reaches past the 96x96 image by" in err and "cut at its edge" in err
    bx, by, bw, bh = json.loads((tmp_path / "ann" / "train.json").read_text())["annotations"][3]["bbox"]
    assert bx + bw == pytest.approx(95.5) and "1 boxes cut at the image edge" in out


def test_without_good_boxes_a_repair_pads_as_dogflws_train_boxes(tmp_path):
    from basics.dogflw import DOGFLW_BOX_PADDING, check_boxes
    assert list(check_boxes([])[1]) == list(DOGFLW_BOX_PADDING) == [0.12, 0.16, 0.14, 0.17]


def test_one_problem_shared_by_many_files_is_summarised(tmp_path, capsys):
    root = make_faces(tmp_path / "faces68_like", {"train": 30, "val": 2}, SMALL_META)
    with pytest.raises(LabelError, match="no usable image; nothing written .*--meta"):
        convert(root, tmp_path / "ann", DOGFLW_META)  # 8 landmarks per label, DogFLW has 46
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and err[3] == "... and 29 more files: has 8 landmarks, expected 46"  # 32 labels


def test_a_fifo_among_the_images_is_skipped_with_one_line_and_never_opened(root, tmp_path):
    images = root / "train" / "images"
    (images / "train_0001.png").replace(tmp_path / "elsewhere.png")
    (images / "train_0001.png").symlink_to(tmp_path / "elsewhere.png")  # a link is followed, as today
    (images / "train_0002.png").unlink()
    os.mkfifo(images / "train_0002.png")
    result = subprocess.run([sys.executable, "tools/convert_dogflw_to_coco.py", "--dogflw-root", str(root),
                             "--out-dir", str(tmp_path / "ann")], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [f"{images / 'train_0002.png'}: not a regular file (a FIFO); skipped"]
    assert "train: 4 images written" in result.stdout and "1 left out" in result.stdout


def halve_images(root, split, numbers):
    """Images resized after labelling: each of `numbers` saved at half its size."""
    for n in numbers:
        path = root / split / "images" / f"{split}_{n:04d}.png"
        image = Image.open(path)
        image.resize((image.width // 2, image.height // 2)).save(path)


def test_images_resized_after_labelling_are_left_out_and_the_likely_cause_said(tmp_path, capsys):
    root = make_faces(tmp_path / "dogflw", {"train": 4, "val": 12}, DOGFLW_META)
    halve_images(root, "val", [1, 4, 7, 10])
    assert convert(root, tmp_path / "ann", DOGFLW_META) == {"train": 4, "val": 8}
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if "outside" in line]
    assert lines[:4] == [f"{root / 'val' / 'images' / f'val_{n:04d}.png'}: more than a quarter of its labelled "
                         "landmarks lie outside it (by over 4 px)" for n in (1, 4, 7, 10)]
    assert lines[4:] == ["val: 4 of 12 images have landmarks far outside the image: the images were most likely "
                         "resized after labelling; check they are the originals"]
    assert "val: 8 images written" in out and "4 left out" in out
    assert len(json.loads((tmp_path / "ann" / "val.json").read_text())["images"]) == 8


def test_one_image_with_landmarks_outside_it_is_left_out_without_a_cause_guessed(tmp_path, capsys):
    root = make_faces(tmp_path / "dogflw", {"train": 4, "val": 12}, DOGFLW_META)
    halve_images(root, "val", [3])
    assert convert(root, tmp_path / "ann", DOGFLW_META) == {"train": 4, "val": 11}
    assert "resized after labelling" not in capsys.readouterr().err


def test_images_resized_after_labelling_stop_a_strict_conversion(tmp_path):
    root = make_faces(tmp_path / "dogflw", {"train": 4, "val": 12}, DOGFLW_META)
    halve_images(root, "val", [1, 4, 7, 10])
    result = run_cli("tools/convert_dogflw_to_coco.py", "--dogflw-root", str(root), "--out-dir", str(tmp_path / "ann"),
                     "--strict", check=False)
    assert result.returncode == 1 and "resized after labelling" in result.stderr
    assert "nothing written (--strict)" in result.stderr and not list((tmp_path / "ann").glob("*.json"))
