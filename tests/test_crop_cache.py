"""The crop cache: built once, equal to direct crops, rebuilt when anything it depends on changes."""

import itertools
import json
import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from basics.geometry import apply_affine, box_to_center_size, crop_affine, invert_affine
from dataset import Augmentation, LandmarkDataset, collate_readable


def test_cached_crops_equal_direct_ones_and_augment_alike(toy_train_json, tmp_path):
    direct = LandmarkDataset(toy_train_json, None, 64)
    cached = LandmarkDataset(toy_train_json, None, 64)
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
def test_every_augmented_crop_lies_inside_the_cached_crop(toy_train_json, aug):
    dataset = LandmarkDataset(toy_train_json, None, 64, augmentation=aug)
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


def test_crop_cache_is_reused_and_rebuilt_when_annotations_or_images_change(toy_train_json, tmp_path, capsys):
    copy = tmp_path / "train.json"
    copy.write_bytes(toy_train_json.read_bytes())
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
    assert changed[0]["keypoints"][0, 0] != LandmarkDataset(toy_train_json, None, 64)[0]["keypoints"][0, 0]
    image = changed.data_root / changed.records[0]["file"]
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the image was replaced
    assert LandmarkDataset(copy, None, 64).use_cache(tmp_path / "cache") != changed.cache.path


def test_crop_cache_build_survives_another_build_of_it_finishing_first(toy_train_json, tmp_path, monkeypatch):
    """Two runs started together build the same cache file; neither may take the other's partial files."""
    dataset = LandmarkDataset(toy_train_json, None, 64)
    replace, other_build_done = os.replace, []

    def replace_after_the_other_build(source, target):
        if not other_build_done:
            other_build_done.append(True)
            LandmarkDataset(toy_train_json, None, 64).use_cache(tmp_path / "cache")
        replace(source, target)

    monkeypatch.setattr(os, "replace", replace_after_the_other_build)
    path = dataset.use_cache(tmp_path / "cache")
    assert other_build_done and np.load(path).shape == (6, 64, 64, 3)
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, path.with_suffix(".json").name])


def test_interrupted_crop_cache_build_leaves_no_files(toy_train_json, tmp_path, monkeypatch):
    def interrupted(path):
        raise KeyboardInterrupt

    monkeypatch.setattr("basics.crop_cache.read_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        LandmarkDataset(toy_train_json, None, 64).use_cache(tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_crop_cache_lists_unreadable_images(toy_train_json, tmp_path):
    dataset = LandmarkDataset(toy_train_json, None, 64)
    path = dataset.data_root / dataset.records[1]["file"]
    original = path.read_bytes()
    path.write_bytes(b"not an image")
    try:
        dataset.use_cache(tmp_path / "cache")
    finally:
        path.write_bytes(original)
    assert dataset[1] == {"unreadable": str(path), "index": 1} and "image" in dataset[0]


def test_a_truncated_crop_cache_is_built_again(toy_train_json, tmp_path, capsys):
    path = LandmarkDataset(toy_train_json, None, 64).use_cache(tmp_path / "cache")
    expected = np.load(path).copy()
    path.write_bytes(path.read_bytes()[:5000])  # a copy or a disk that gave up half-way
    dataset = LandmarkDataset(toy_train_json, None, 64)
    assert dataset.use_cache(tmp_path / "cache") == path
    assert "crop cache is damaged (truncated?); building it again" in capsys.readouterr().out
    assert np.array_equal(np.load(path), expected) and dataset[5]["image"].shape == (3, 64, 64)


def test_the_crop_cache_has_the_users_normal_file_mode(toy_train_json, tmp_path):
    previous = os.umask(0o022)
    try:
        path = LandmarkDataset(toy_train_json, None, 64).use_cache(tmp_path / "cache")
    finally:
        os.umask(previous)
    assert {oct(p.stat().st_mode & 0o777) for p in path.parent.iterdir()} == {"0o644"}
