import numpy as np
import torch

from basics.geometry import (CropGeometry, apply_affine, box_around, box_for_landmarks, box_to_center_size,
                             compose_affine, crop_affine, flip_points, heatmap_to_input, input_to_heatmap,
                             invert_affine, padding_around, points_extent, warp_image)


def test_affine_forward_then_inverse_returns_points():
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 500, size=(46, 2))
    matrix = crop_affine(np.array([250.0, 180.0]), 310.0, 256, rotation_deg=23.0)
    back = apply_affine(apply_affine(points, matrix), invert_affine(matrix))
    np.testing.assert_allclose(back, points, atol=1e-9)


def test_batched_inverse_matches_single():
    matrices = np.stack([crop_affine(np.array([100.0, 90.0 + i]), 80.0 + i, 128, 10.0 * i) for i in range(3)])
    points = np.random.default_rng(1).uniform(0, 200, size=(3, 5, 2))
    batched = apply_affine(points, invert_affine(matrices))
    single = np.stack([apply_affine(points[i], invert_affine(matrices[i])) for i in range(3)])
    np.testing.assert_allclose(batched, single, atol=1e-9)


def test_compose_applies_inner_then_outer():
    inner = crop_affine(np.array([120.0, 95.0]), 140.0, 192, rotation_deg=-12.0)
    outer = crop_affine(np.array([90.0, 101.0]), 150.0, 128, rotation_deg=25.0)
    points = np.random.default_rng(2).uniform(0, 250, size=(7, 2))
    np.testing.assert_allclose(apply_affine(points, compose_affine(outer, inner)),
                               apply_affine(apply_affine(points, inner), outer), atol=1e-9)
    np.testing.assert_allclose(compose_affine(inner, invert_affine(inner)), np.eye(2, 3), atol=1e-12)


def test_crop_edges_land_on_outer_pixel_edges():
    center, size = box_to_center_size(np.array([10.0, 20.0, 110.0, 70.0]), padding=1.0)
    assert size == 100.0 and np.allclose(center, [60.0, 45.0])
    matrix = crop_affine(center, size, 64)
    corners = apply_affine(np.array([[10.0, -5.0], [110.0, 95.0]]), matrix)
    np.testing.assert_allclose(corners, [[-0.5, -0.5], [63.5, 63.5]], atol=1e-9)


def test_warp_moves_a_pixel_where_the_points_go():
    image = np.zeros((200, 240, 3), dtype=np.uint8)
    image[120, 90] = 255  # a single bright pixel at x=90, y=120
    matrix = crop_affine(np.array([100.0, 110.0]), 50.0, 100, rotation_deg=30.0)  # 2x magnification
    crop = warp_image(image, matrix, 100)[..., 0].astype(float)
    ys, xs = np.nonzero(crop)
    centroid = np.array([(xs * crop[ys, xs]).sum(), (ys * crop[ys, xs]).sum()]) / crop[ys, xs].sum()
    np.testing.assert_allclose(centroid, apply_affine(np.array([[90.0, 120.0]]), matrix)[0], atol=0.1)


def test_flip_twice_is_identity_numpy_and_torch():
    flip_index = [1, 0, 2, 4, 3]
    points = np.random.default_rng(2).uniform(0, 64, size=(3, 5, 2))
    np.testing.assert_allclose(flip_points(flip_points(points, flip_index, 64), flip_index, 64), points)
    tensor = torch.from_numpy(points)
    assert torch.allclose(flip_points(flip_points(tensor, flip_index, 64), flip_index, 64), tensor)
    assert np.allclose(flip_points(points, flip_index, 64)[:, 0], np.stack([63 - points[:, 1, 0], points[:, 1, 1]], -1))


def test_flip_points_matches_mirrored_image():
    image = np.zeros((32, 32), dtype=np.uint8)
    image[5, 7] = 255
    mirrored = image[:, ::-1]
    y, x = np.argwhere(mirrored)[0]
    np.testing.assert_allclose(flip_points(np.array([[7.0, 5.0]]), [0], 32)[0], [x, y])


def test_heatmap_conversion_round_trip_and_edges():
    points = np.array([[-0.5, -0.5], [255.5, 255.5], [17.3, 200.9]])
    np.testing.assert_allclose(heatmap_to_input(input_to_heatmap(points, 4), 4), points)
    np.testing.assert_allclose(input_to_heatmap(points[:2], 4), [[-0.5, -0.5], [63.5, 63.5]])
    # mirroring commutes with the change of grid: flip in input = flip in heatmap
    np.testing.assert_allclose(input_to_heatmap(255 - points, 4), 63 - input_to_heatmap(points, 4))


def test_a_box_drawn_around_landmarks_with_the_boxes_padding_is_the_box_again():
    points = np.array([[10.0, 20.0], [50.0, 30.0], [30.0, 60.0]])            # extent 10..50 x 20..60
    box = np.array([6.0, 12.0, 54.0, 68.0])                                 # 4, 8, 4, 8 px: 10 %, 20 %, 10 %, 20 %
    padding = padding_around([box], [points_extent(points)])
    np.testing.assert_allclose(padding, [0.1, 0.2, 0.1, 0.2])
    np.testing.assert_allclose(box_around(points_extent(points), padding), box)
    np.testing.assert_allclose(CropGeometry(64, 1.25, tuple(padding)).box_around_landmarks(points + 5), box + 5)
    assert padding_around([box], [np.array([10.0, 20.0, 10.0, 60.0])]) is None  # no width: no padding to learn
    np.testing.assert_array_equal(box_for_landmarks(points, padding), box)


def test_padding_is_four_floats_or_the_default_without_an_extent_to_measure():
    points = np.array([[10.0, 20.0], [50.0, 30.0], [30.0, 60.0]])
    padding = padding_around([[6.0, 12.0, 54.0, 68.0]], [points_extent(points)], (0.3, 0.3, 0.3, 0.3))
    assert all(type(v) is float for v in padding) and padding == tuple(np.float64([0.1, 0.2, 0.1, 0.2]))
    assert padding_around([], [], (0.3, 0.3, 0.3, 0.3)) == (0.3, 0.3, 0.3, 0.3)
    assert padding_around([[6.0, 12.0, 54.0, 68.0]], [np.array([10.0, 20.0, 50.0, 20.0])], (0.3,) * 4) == (0.3,) * 4


def test_a_followed_box_moves_and_scales_with_the_landmarks():
    detected_box, detected = np.array([10.0, 20, 50, 70]), np.array([[20.0, 30], [40, 30], [30, 55]])
    moved = (detected - [30, 38.33]) * 1.5 + [30 + 7, 38.33 - 4]  # 1.5 times larger, moved (7, -4)
    box = box_for_landmarks(moved, reference=(detected_box, detected))
    centre, size = (box[:2] + box[2:]) / 2, box[2:] - box[:2]
    np.testing.assert_allclose(size, [60, 75], atol=1e-6)
    np.testing.assert_allclose(centre, np.array([30, 45]) + (np.array([30, 45]) - [30, 38.33]) * 0.5 + [7, -4],
                               atol=0.01)
