import pytest
import torch

from basics.codec import HEATMAP_STRIDE, HeatmapCodec, heatmap_targets, soft_argmax
from basics.geometry import input_to_heatmap

NOT_MIRRORED = torch.zeros(1, dtype=torch.bool)


def test_heatmap_target_has_its_peak_at_the_sub_pixel_centre():
    points = torch.tensor([[[5.0, 7.0], [10.3, 3.6]]])
    maps = heatmap_targets(points, 16, 20, sigma=2.0)
    assert maps.shape == (1, 2, 16, 20)
    assert maps[0, 0, 7, 5] == pytest.approx(1.0) and maps[0, 0].max() == pytest.approx(1.0)
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(20.0), indexing="ij")
    expected = torch.exp(-((xs - 10.3) ** 2 + (ys - 3.6) ** 2) / 8)
    assert torch.allclose(maps[0, 1], expected, atol=1e-6)


@pytest.mark.parametrize("centre", [(8.0, 8.0), (10.3, 7.71), (21.49, 12.05), (6.5, 24.9)])
def test_soft_argmax_returns_the_centre_of_a_gaussian_target(centre):
    codec = HeatmapCodec(1)
    target = heatmap_targets(torch.tensor([[centre]]), 32, 32, sigma=2.0)
    decoded = soft_argmax(target, codec.log_beta.exp())[0, 0]
    assert torch.allclose(decoded, torch.tensor(centre), atol=0.05)


def test_decode_returns_input_pixels_and_confidence():
    codec = HeatmapCodec(2)
    points = torch.tensor([[[20.0, 30.0], [41.5, 9.25]]])
    logits = heatmap_targets(input_to_heatmap(points, HEATMAP_STRIDE), 16, 16, sigma=2.0)
    decoded, confidence = codec.decode(logits)
    assert torch.allclose(decoded, points, atol=0.2)
    assert torch.allclose(confidence, torch.ones(1, 2), atol=0.05)


def test_decode_adds_the_mirror_offset_to_mirrored_crops_only():
    codec = HeatmapCodec(2)
    logits = heatmap_targets(torch.tensor([[[20.0, 30.0], [41.5, 9.25]]]), 16, 16, sigma=2.0).repeat(2, 1, 1, 1)
    with torch.no_grad():
        codec.mirror_offset.copy_(torch.tensor([[0.5, -0.25], [0.0, 1.0]]))
    plain = codec.decode(logits)[0]
    mixed = codec.decode(logits, mirrored=torch.tensor([False, True]))[0]
    assert torch.equal(mixed[0], plain[0])
    assert torch.allclose(mixed[1] - plain[1], torch.tensor([[2.0, -1.0], [0.0, 4.0]]))


def test_loss_is_small_for_a_perfect_prediction_and_large_otherwise():
    codec = HeatmapCodec(3)
    keypoints = torch.tensor([[[10.0, 20.0], [30.5, 40.25], [36.0, 12.0]]])
    perfect = heatmap_targets(input_to_heatmap(keypoints, HEATMAP_STRIDE), 16, 16, 2.0)
    loss, parts = codec.loss(perfect, keypoints, NOT_MIRRORED, 1.0, 1.0)
    assert float(parts["heatmap"]) == pytest.approx(0.0, abs=1e-6) and parts["coord"] < 0.05
    shifted = torch.roll(perfect, shifts=2, dims=-1)  # 2 heatmap pixels to the right
    worse, worse_parts = codec.loss(shifted, keypoints, NOT_MIRRORED, 1.0, 1.0)
    assert float(worse_parts["coord"]) == pytest.approx(2.0, abs=0.1) and worse > loss + 2


@pytest.mark.parametrize("heatmap_weight, coord_weight", [(1.0, 1.0), (1.0, 0.0), (0.0, 1.0)])
def test_the_mirror_offset_learns_how_mirrored_labels_differ(heatmap_weight, coord_weight):
    """Mirrored crops whose labels sit 1 heatmap pixel right of what the network sees: both loss
    terms move the offset there, and then a perfect heatmap has (near) zero loss."""
    codec = HeatmapCodec(3)
    seen = torch.tensor([[[10.0, 20.0], [30.5, 40.25], [36.0, 12.0]]]).repeat(2, 1, 1)
    logits = heatmap_targets(input_to_heatmap(seen, HEATMAP_STRIDE), 16, 16, 2.0)
    labels = seen + torch.tensor([[[0.0, 0.0]], [[HEATMAP_STRIDE, 0.0]]])  # the second crop is mirrored
    mirrored = torch.tensor([False, True])
    optimizer = torch.optim.Adam([codec.mirror_offset], lr=0.05)
    for _ in range(100):
        loss, _ = codec.loss(logits, labels, mirrored, heatmap_weight, coord_weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    offset = codec.mirror_offset.detach()
    assert offset[:, 0] == pytest.approx(torch.ones(3), abs=0.1) and offset[:, 1].abs().max() < 0.1
    _, parts = codec.loss(logits, labels, mirrored, 1.0, 1.0)
    assert parts["heatmap"] < 0.01 and parts["coord"] < 0.1
    assert torch.allclose(codec.decode(logits[1:], mirrored=True)[0].detach(), labels[1:], atol=0.5)


def test_landmarks_outside_the_crop_get_no_coordinate_loss():
    codec = HeatmapCodec(2)
    keypoints = torch.tensor([[[10.0, 20.0], [90.0, 20.0]]])  # the second is right of the 64 px crop
    logits = heatmap_targets(input_to_heatmap(keypoints, HEATMAP_STRIDE), 16, 16, 2.0)
    _, parts = codec.loss(logits, keypoints, NOT_MIRRORED, 0.0, 1.0)
    assert parts["coord"] < 0.05


def test_keypoint_weights_scale_each_landmarks_loss():
    codec = HeatmapCodec(2)
    keypoints = torch.tensor([[[10.0, 20.0], [30.0, 40.0]]])
    logits = heatmap_targets(input_to_heatmap(keypoints, HEATMAP_STRIDE), 16, 16, 2.0)
    logits[:, 1] = torch.roll(logits[:, 1], shifts=2, dims=-1)  # only landmark 1 is wrong
    _, even = codec.loss(logits, keypoints, NOT_MIRRORED, 1.0, 1.0, torch.tensor([1.0, 1.0]))
    _, skewed = codec.loss(logits, keypoints, NOT_MIRRORED, 1.0, 1.0, torch.tensor([0.5, 1.5]))
    assert float(skewed["heatmap"]) == pytest.approx(1.5 * float(even["heatmap"]), rel=1e-5)
    assert float(skewed["coord"]) == pytest.approx(1.5 * float(even["coord"]), rel=0.05)


def test_unlabelled_landmarks_get_no_loss_wherever_their_coordinates_are():
    codec = HeatmapCodec(3)
    keypoints = torch.tensor([[[10.0, 20.0], [30.5, 40.25], [36.0, 12.0]]])
    logits = heatmap_targets(input_to_heatmap(keypoints, HEATMAP_STRIDE), 16, 16, 2.0)
    labelled = torch.tensor([[True, True, False]])
    _, exact = codec.loss(logits, keypoints, NOT_MIRRORED, 1.0, 1.0, labelled=labelled)
    moved = keypoints.clone()
    moved[0, 2] = torch.tensor([0.0, 0.0])  # COCO stores an unlabelled landmark as 0, 0, 0
    _, unlabelled_moved = codec.loss(logits, moved, NOT_MIRRORED, 1.0, 1.0, labelled=labelled)
    _, labelled_moved = codec.loss(logits, moved, NOT_MIRRORED, 1.0, 1.0)
    assert float(unlabelled_moved["heatmap"]) == pytest.approx(float(exact["heatmap"]), abs=1e-7)
    assert float(unlabelled_moved["coord"]) == pytest.approx(float(exact["coord"]), abs=1e-6)
    assert labelled_moved["coord"] > exact["coord"] + 1 and labelled_moved["heatmap"] > exact["heatmap"] + 0.1
