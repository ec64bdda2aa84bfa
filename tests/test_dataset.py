"""Face crops from COCO keypoint files: landmarks follow the crop, augmentation is seeded, unreadable images set aside."""

import cv2
import numpy as np
import pytest
import torch

from basics.coco_files import load_coco
from basics.errors import DataError
from basics.geometry import apply_affine, box_to_center_size, crop_affine
from conftest import SMALL_META, coco_copy, palette
from dataset import Augmentation, EpochSampler, LandmarkDataset, collate_readable, colour_matrix


def test_eval_sample_maps_landmarks_with_the_crop_affine(toy_train_json):
    dataset = LandmarkDataset(toy_train_json, None, 64)
    sample = dataset[3]
    record = dataset.records[3]
    center, size = box_to_center_size(record["box"], 1.25)
    expected = apply_affine(record["keypoints"], crop_affine(center, size, 64))
    assert sample["image"].shape == (3, 64, 64) and sample["image"].dtype == torch.uint8
    np.testing.assert_allclose(sample["keypoints"].numpy(), expected, atol=1e-4)
    np.testing.assert_allclose(sample["affine"].numpy(), crop_affine(center, size, 64))


@pytest.mark.parametrize("flip_prob", [0.0, 1.0])
def test_augmented_landmarks_stay_on_their_discs(toy_train_json, flip_prob):
    """After random scale/rotation/shift (and flip), each landmark still sits on a disc of its colour."""
    aug = Augmentation(flip_prob=flip_prob, color=0, blur_prob=0, noise_prob=0, erase_prob=0)
    dataset = LandmarkDataset(toy_train_json, None, 128, augmentation=aug)
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


def test_photometric_augmentation_keeps_uint8_and_shape(toy_train_json):
    dataset = LandmarkDataset(toy_train_json, None, 64, augmentation=Augmentation(blur_prob=1, noise_prob=1, erase_prob=1))
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


def test_augmentation_is_fixed_by_seed_epoch_and_index(toy_train_json):
    dataset = LandmarkDataset(toy_train_json, None, 64, augmentation=Augmentation(), seed=5)
    first, again, next_epoch = dataset[(2, 1)], dataset[(2, 1)], dataset[(2, 2)]
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["keypoints"], again["keypoints"])
    assert not torch.equal(first["keypoints"], next_epoch["keypoints"])
    other_seed = LandmarkDataset(toy_train_json, None, 64, augmentation=Augmentation(), seed=6)[(2, 1)]
    assert not torch.equal(first["keypoints"], other_seed["keypoints"])


def test_unreadable_image_is_set_aside_by_the_collate(toy_train_json):
    dataset = LandmarkDataset(toy_train_json, None, 64)
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


def test_coco_visibility_is_carried_through_crop_and_flip(toy_train_json, tmp_path):
    def hide(coco):
        coco["annotations"][0]["keypoints"][0:3] = [0, 0, 0]  # eye_l not labelled
    path = coco_copy(toy_train_json, tmp_path, hide)
    records = load_coco(path).records
    assert records[0]["labelled"].tolist() == [False] + [True] * 7 and records[1]["labelled"].all()
    plain = LandmarkDataset(path, toy_train_json.parents[1], 64)[0]
    flipped = LandmarkDataset(path, toy_train_json.parents[1], 64,
                              augmentation=Augmentation(flip_prob=1, color=0, blur_prob=0, noise_prob=0, erase_prob=0))
    assert plain["labelled"].tolist() == [False] + [True] * 7
    assert flipped[(0, 1)]["labelled"].tolist() == [True, False] + [True] * 6  # eye_l is eye_r's mirror
    batch = collate_readable([plain, LandmarkDataset(path, toy_train_json.parents[1], 64)[1]])
    assert batch["labelled"].shape == (2, 8) and batch["labelled"].dtype == torch.bool




def test_a_file_without_faces_says_so_before_asking_for_a_data_root(toy_train_json, tmp_path):
    path = coco_copy(toy_train_json, tmp_path, lambda coco: coco.update(images=[], annotations=[], info={}))
    with pytest.raises(DataError, match=r"changed\.json: holds no annotated faces$"):
        LandmarkDataset(path, None, 64)
