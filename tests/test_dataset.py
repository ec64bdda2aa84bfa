import itertools
import json
import os

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SMALL_META, make_faces, palette
from torch.utils.data import DataLoader

from coco_files import load_coco, read_meta_file, validate_keypoint_meta
from dataset import Augmentation, EpochSampler, LandmarkDataset, collate_readable, colour_matrix
from errors import DataError
from images import read_image
from geometry import apply_affine, box_to_center_size, crop_affine, invert_affine
from dogflw import convert


@pytest.fixture(scope="module")
def toy_ann(tmp_path_factory):
    root = make_faces(tmp_path_factory.mktemp("toy"), {"train": 6, "val": 2}, SMALL_META, image_size=128)
    convert(root, root / "ann", SMALL_META)
    return root / "ann" / "train.json"


def test_load_coco_reads_records_and_meta(toy_ann):
    coco = load_coco(toy_ann)
    records, meta, data_root = coco.records, coco.meta, coco.data_root
    assert len(records) == 6 and meta["num_keypoints"] == 8 and meta["iod_pair"] == [0, 1]
    assert records[0]["keypoints"].shape == (8, 2) and records[0]["box"].shape == (4,)
    assert data_root == str(toy_ann.parents[1].resolve())


def test_eval_sample_maps_landmarks_with_the_crop_affine(toy_ann):
    dataset = LandmarkDataset(toy_ann, None, 64)
    sample = dataset[3]
    record = dataset.records[3]
    center, size = box_to_center_size(record["box"], 1.25)
    expected = apply_affine(record["keypoints"], crop_affine(center, size, 64))
    assert sample["image"].shape == (3, 64, 64) and sample["image"].dtype == torch.uint8
    np.testing.assert_allclose(sample["keypoints"].numpy(), expected, atol=1e-4)
    np.testing.assert_allclose(sample["affine"].numpy(), crop_affine(center, size, 64))


@pytest.mark.parametrize("flip_prob", [0.0, 1.0])
def test_augmented_landmarks_stay_on_their_discs(toy_ann, flip_prob):
    """After random scale/rotation/shift (and flip), each landmark still sits on a disc of its colour."""
    aug = Augmentation(flip_prob=flip_prob, color=0, blur_prob=0, noise_prob=0, erase_prob=0)
    dataset = LandmarkDataset(toy_ann, None, 128, augmentation=aug)
    colours = palette(SMALL_META["flip_index"])
    checked = 0
    for index in range(len(dataset)):
        sample = dataset[(index, 1)]
        image = sample["image"].permute(1, 2, 0).numpy().astype(int)
        for i, (x, y) in enumerate(sample["keypoints"].numpy()):
            if 2 <= x <= 125 and 2 <= y <= 125:
                colour = colours[min(i, SMALL_META["flip_index"][i])]
                assert np.abs(image[int(round(y)), int(round(x))] - colour).max() <= 40, (index, i)
                checked += 1
    assert checked > 30


def test_photometric_augmentation_keeps_uint8_and_shape(toy_ann):
    dataset = LandmarkDataset(toy_ann, None, 64, augmentation=Augmentation(blur_prob=1, noise_prob=1, erase_prob=1))
    image = dataset[0]["image"]
    assert image.shape == (3, 64, 64) and image.dtype == torch.uint8


@pytest.mark.parametrize("brightness,contrast,saturation", [(1.0, 1.0, 1.0), (1.3, 0.7, 1.2), (0.75, 1.25, 0.7)])
def test_colour_matrix_equals_brightness_then_contrast_then_saturation(brightness, contrast, saturation):
    image = np.random.default_rng(3).uniform(0, 255, size=(20, 30, 3)).astype(np.float32)
    expected = image * brightness
    expected = (expected - expected.mean()) * contrast + expected.mean()
    grey = expected.mean(axis=2, keepdims=True)
    expected = (expected - grey) * saturation + grey
    jittered = cv2.transform(image, colour_matrix(image, brightness, contrast, saturation))
    np.testing.assert_allclose(jittered, expected, atol=1e-3)


def test_augmentation_is_fixed_by_seed_epoch_and_index(toy_ann):
    dataset = LandmarkDataset(toy_ann, None, 64, augmentation=Augmentation(), seed=5)
    first, again, next_epoch = dataset[(2, 1)], dataset[(2, 1)], dataset[(2, 2)]
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["keypoints"], again["keypoints"])
    assert not torch.equal(first["keypoints"], next_epoch["keypoints"])
    other_seed = LandmarkDataset(toy_ann, None, 64, augmentation=Augmentation(), seed=6)[(2, 1)]
    assert not torch.equal(first["keypoints"], other_seed["keypoints"])


def test_unreadable_image_is_set_aside_by_the_collate(toy_ann):
    dataset = LandmarkDataset(toy_ann, None, 64)
    path = dataset.data_root / dataset.records[1]["file"]
    original = path.read_bytes()
    path.write_bytes(b"not an image")
    try:
        batch = collate_readable([dataset[0], dataset[1], dataset[2]])
        alone = collate_readable([dataset[1]])
    finally:
        path.write_bytes(original)
    assert batch["image"].shape[0] == 2 and batch["index"].tolist() == [0, 2]
    assert batch["unreadable"] == [str(path)] and alone == {"unreadable": [str(path)]}


@pytest.mark.parametrize("change, message", [
    ({"flip_index": [0, 0, 3, 2, 4, 6, 5, 7]}, "not a permutation"),
    ({"flip_index": [1, 2, 0, 3, 4, 6, 5, 7]}, "own inverse"),
    ({"iod_pair": [0, 8]}, "iod_pair"),
])
def test_bad_keypoint_meta_is_refused(change, message):
    meta = {**SMALL_META, **change}
    with pytest.raises(DataError, match=message):
        validate_keypoint_meta(meta, "meta.json")


def test_unusable_annotation_file_names_itself(tmp_path):
    bad = tmp_path / "train.json"
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match=str(bad)):
        load_coco(bad)


def test_cached_crops_equal_direct_ones_and_augment_alike(toy_ann, tmp_path):
    direct = LandmarkDataset(toy_ann, None, 64)
    cached = LandmarkDataset(toy_ann, None, 64)
    path = cached.use_cache(tmp_path / "cache")
    assert np.load(path).shape == (6, 64, 64, 3)  # no augmentation: no margin
    for index in range(len(direct)):  # without augmentation: the same pixels, up to cv2's fixed-point rounding
        a, b = direct[index], cached[index]
        assert (a["image"].int() - b["image"].int()).abs().max() <= 1
        assert torch.equal(a["keypoints"], b["keypoints"])
    aug = Augmentation(color=0, blur_prob=0, noise_prob=0, erase_prob=0)
    direct.augmentation = cached.augmentation = aug
    path = cached.use_cache(tmp_path / "cache")
    assert np.load(path).shape == (6, 126, 126, 3)  # 64 px x reach 1.96, rounded up to shared pixel centres
    for index in range(len(direct)):  # augmented: the same landmarks, the image resampled once more
        a, b = direct[(index, 3)], cached[(index, 3)]
        assert torch.equal(a["keypoints"], b["keypoints"])
        assert (a["image"].float() - b["image"].float()).abs().mean() < 4
    workers = DataLoader(cached, batch_size=3, num_workers=2, collate_fn=collate_readable)
    assert torch.equal(torch.cat([batch["image"] for batch in workers]), torch.stack([cached[i]["image"] for i in range(6)]))


@pytest.mark.parametrize("aug", [Augmentation(), Augmentation(scale=0.4, rotation=60, shift=0.2)])
def test_every_augmented_crop_lies_inside_the_cached_crop(toy_ann, aug):
    dataset = LandmarkDataset(toy_ann, None, 64, augmentation=aug)
    side = dataset.cache_side()
    to_cache = dataset.geometry.enlarged(side).affine(dataset.records[0]["box"])
    center, size = box_to_center_size(dataset.records[0]["box"], dataset.geometry.box_padding)
    corners = np.array([[-0.5, -0.5], [63.5, -0.5], [63.5, 63.5], [-0.5, 63.5]])
    extremes = itertools.product((1 - aug.scale, 1 + aug.scale), (-aug.shift, aug.shift), (-aug.shift, aug.shift),
                                 np.linspace(-aug.rotation, aug.rotation, 25))
    for scale, shift_x, shift_y, rotation in extremes:  # as LandmarkDataset draws them, at their limits
        crop = crop_affine(center + np.array([shift_x, shift_y]) * size * scale, size * scale, 64, rotation)
        in_cache = apply_affine(apply_affine(corners, invert_affine(crop)), to_cache)
        assert in_cache.min() >= -0.5 - 1e-9 and in_cache.max() <= side - 0.5 + 1e-9, (scale, shift_x, rotation)


def test_crop_cache_is_reused_and_rebuilt_when_annotations_or_images_change(toy_ann, tmp_path, capsys):
    copy = tmp_path / "train.json"
    copy.write_bytes(toy_ann.read_bytes())
    first = LandmarkDataset(copy, None, 64).use_cache(tmp_path / "cache")
    assert "building the crop cache" in capsys.readouterr().out
    again = LandmarkDataset(copy, None, 64).use_cache(tmp_path / "cache")
    assert again == first and "building" not in capsys.readouterr().out
    assert LandmarkDataset(copy, None, 96).use_cache(tmp_path / "cache") != first  # another crop size
    coco = json.loads(copy.read_text())
    coco["annotations"][0]["keypoints"][0] += 1.0
    copy.write_text(json.dumps(coco))
    changed = LandmarkDataset(copy, None, 64)
    assert changed.use_cache(tmp_path / "cache") != first and "building" in capsys.readouterr().out
    assert changed[0]["keypoints"][0, 0] != LandmarkDataset(toy_ann, None, 64)[0]["keypoints"][0, 0]
    image = changed.data_root / changed.records[0]["file"]
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the image was replaced
    assert LandmarkDataset(copy, None, 64).use_cache(tmp_path / "cache") != changed.cache.path


def test_crop_cache_build_survives_another_build_of_it_finishing_first(toy_ann, tmp_path, monkeypatch):
    """Two runs started together build the same cache file; neither may take the other's partial files."""
    dataset = LandmarkDataset(toy_ann, None, 64)
    replace, other_build_done = os.replace, []

    def replace_after_the_other_build(source, target):
        if not other_build_done:
            other_build_done.append(True)
            LandmarkDataset(toy_ann, None, 64).use_cache(tmp_path / "cache")
        replace(source, target)

    monkeypatch.setattr(os, "replace", replace_after_the_other_build)
    path = dataset.use_cache(tmp_path / "cache")
    assert other_build_done and np.load(path).shape == (6, 64, 64, 3)
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, path.with_suffix(".json").name])


def test_interrupted_crop_cache_build_leaves_no_files(toy_ann, tmp_path, monkeypatch):
    def interrupted(path):
        raise KeyboardInterrupt

    monkeypatch.setattr("crop_cache.read_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        LandmarkDataset(toy_ann, None, 64).use_cache(tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_crop_cache_lists_unreadable_images(toy_ann, tmp_path):
    dataset = LandmarkDataset(toy_ann, None, 64)
    path = dataset.data_root / dataset.records[1]["file"]
    original = path.read_bytes()
    path.write_bytes(b"not an image")
    try:
        dataset.use_cache(tmp_path / "cache")
    finally:
        path.write_bytes(original)
    assert dataset[1] == {"unreadable": str(path), "index": 1} and "image" in dataset[0]


def test_epoch_sampler_shards_and_skips_deterministically():
    full = list(EpochSampler(20, 4, seed=3))
    assert len(full) == 20 and {i for i, _ in full} == set(range(20)) and {e for _, e in full} == {1}
    sampler = EpochSampler(20, 4, seed=3)
    sampler.set_epoch(1, start_batch=2)
    assert list(sampler) == full[8:] and len(sampler) == 12
    sampler.set_epoch(2)
    assert [i for i, _ in sampler] != [i for i, _ in full]
    ranks = [list(EpochSampler(21, 2, seed=3, rank=r, world_size=2)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 10 and not {i for i, _ in ranks[0]} & {i for i, _ in ranks[1]}


def coco_copy(ann_file, tmp_path, change):
    """A copy of a COCO file with `change(coco)` applied."""
    coco = json.loads(ann_file.read_text())
    change(coco)
    path = tmp_path / "changed.json"
    path.write_text(json.dumps(coco))
    return path


def test_coco_visibility_is_carried_through_crop_and_flip(toy_ann, tmp_path):
    def hide(coco):
        coco["annotations"][0]["keypoints"][0:3] = [0, 0, 0]  # eye_l not labelled
    path = coco_copy(toy_ann, tmp_path, hide)
    records = load_coco(path).records
    assert records[0]["labelled"].tolist() == [False] + [True] * 7 and records[1]["labelled"].all()
    plain = LandmarkDataset(path, toy_ann.parents[1], 64)[0]
    flipped = LandmarkDataset(path, toy_ann.parents[1], 64,
                              augmentation=Augmentation(flip_prob=1, color=0, blur_prob=0, noise_prob=0, erase_prob=0))
    assert plain["labelled"].tolist() == [False] + [True] * 7
    assert flipped[(0, 1)]["labelled"].tolist() == [True, False] + [True] * 6  # eye_l is eye_r's mirror
    batch = collate_readable([plain, LandmarkDataset(path, toy_ann.parents[1], 64)[1]])
    assert batch["labelled"].shape == (2, 8) and batch["labelled"].dtype == torch.bool


@pytest.mark.parametrize("change, message", [
    (lambda coco: coco["annotations"][2]["keypoints"].__setitem__(4, float("nan")), "train_0002.png: keypoint 1 is NaN"),
    (lambda coco: coco["annotations"][2]["keypoints"].__setitem__(0, float("inf")), "train_0002.png: keypoint 0 is NaN"),
    (lambda coco: coco["annotations"][3]["bbox"].__setitem__(2, 0), "train_0003.png: face box"),
    (lambda coco: coco["annotations"][3]["bbox"].__setitem__(3, -5), "train_0003.png: face box"),
])
def test_non_finite_keypoints_and_empty_boxes_are_refused_naming_the_image(toy_ann, tmp_path, change, message):
    path = coco_copy(toy_ann, tmp_path, change)
    with pytest.raises(DataError, match=f"{path}: image train/images/{message}"):
        load_coco(path)


def test_a_foreign_coco_file_says_which_fields_to_add_and_takes_them_from_meta(toy_ann, tmp_path):
    def strip(coco):
        for field in ("flip_index", "iod_pair"):
            del coco["categories"][0][field]
    path = coco_copy(toy_ann, tmp_path, strip)
    with pytest.raises(DataError, match="no flip_index .* iod_pair .* or pass --meta FILE"):
        load_coco(path)
    meta_file = tmp_path / "meta.json"
    meta_file.write_text(json.dumps(SMALL_META))
    coco = load_coco(path, read_meta_file(meta_file))
    records, meta = coco.records, coco.meta
    assert meta["flip_index"] == SMALL_META["flip_index"] and meta["iod_pair"] == [0, 1] and len(records) == 6


def test_a_truncated_crop_cache_is_built_again(toy_ann, tmp_path, capsys):
    path = LandmarkDataset(toy_ann, None, 64).use_cache(tmp_path / "cache")
    expected = np.load(path).copy()
    path.write_bytes(path.read_bytes()[:5000])  # a copy or a disk that gave up half-way
    dataset = LandmarkDataset(toy_ann, None, 64)
    assert dataset.use_cache(tmp_path / "cache") == path
    assert "crop cache is damaged (truncated?); building it again" in capsys.readouterr().out
    assert np.array_equal(np.load(path), expected) and dataset[5]["image"].shape == (3, 64, 64)


def test_the_one_image_reader_turns_an_exif_rotated_jpeg_upright(tmp_path):
    upright = np.zeros((60, 40, 3), dtype=np.uint8)  # 40 wide, 60 tall as displayed
    upright[:10, :, 0] = 255  # a red band along the top
    stored = np.rot90(upright, k=1)  # stored turned a quarter left; EXIF orientation 6 turns it back
    exif = Image.Image.getexif(Image.new("RGB", (1, 1)))
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(stored)).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    image = read_image(tmp_path / "rotated.jpg")
    assert image.shape == (60, 40, 3) and image[:8, :, 0].mean() > 200 and image[20:, :, 0].mean() < 40
    with pytest.raises(DataError, match="cannot read image"):
        read_image(tmp_path / "missing.png")


def test_the_crop_cache_has_the_users_normal_file_mode(toy_ann, tmp_path):
    previous = os.umask(0o022)
    try:
        path = LandmarkDataset(toy_ann, None, 64).use_cache(tmp_path / "cache")
    finally:
        os.umask(previous)
    assert {oct(p.stat().st_mode & 0o777) for p in path.parent.iterdir()} == {"0o644"}
