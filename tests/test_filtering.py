"""Offline filtering: drop the unsure and the jumps, fill short gaps (marked), smooth without lag."""

import numpy as np
import pytest

from analysis.filtering import FilterOptions, fill_gaps, filter_table, filter_track
from analysis.tables import LandmarkTable, NO_FACE


def test_a_short_gap_is_filled_by_interpolation_a_long_one_is_not():
    series = np.array([0.0, 1.0, np.nan, np.nan, 4.0, np.nan, np.nan, np.nan, np.nan, 9.0, np.nan])
    filled, mask = fill_gaps(series, max_gap=3)
    np.testing.assert_allclose(filled[:5], [0, 1, 2, 3, 4])
    assert np.isnan(filled[5:9]).all() and np.isnan(filled[10])  # too long; and nothing after the end
    assert mask.tolist() == [False, False, True, True] + [False] * 7


def test_filtering_removes_jitter_and_jumps_and_keeps_steady_motion_without_lag():
    rng = np.random.default_rng(0)
    t = np.arange(100, dtype=float)
    truth = np.stack([100 + 3 * t, 50 + 0.5 * t], axis=-1)[:, None, :]  # one landmark moving steadily (T, 1, 2)
    noisy = truth + rng.normal(0, 1.0, size=truth.shape)
    confidence = np.full((100, 1), 0.9)
    noisy[40] += [30.0, 0.0]  # a jump of 30 px (1.5 x a 20 px face box... well beyond max_jump)
    confidence[60:63] = 0.01  # three unsure points
    out, conf = filter_track(noisy, confidence, box_side=20.0, options=FilterOptions(window=9))
    error_raw = np.abs(noisy - truth)[5:95].mean()
    error_filtered = np.abs(out - truth)[5:95].mean()
    assert error_filtered < 0.6 * error_raw  # jitter down
    assert np.abs(out[40] - truth[40]).max() < 2  # the jump is gone (dropped, filled, smoothed)
    assert (conf[60:63] == 0).all() and conf[40] == 0 and (conf[:40] == 0.9).all()  # filled points say so
    assert abs(np.mean((out - truth)[5:95, 0, 0])) < 0.3  # a centred filter does not lag behind the motion


def table_of(frames, ids, points, confidence) -> LandmarkTable:
    n = len(frames)
    boxes = np.stack([points[:, :, 0].min(1) - 5, points[:, :, 1].min(1) - 5, points[:, :, 0].max(1) + 5,
                      points[:, :, 1].max(1) + 5], axis=1)
    return LandmarkTable(["a", "b"], np.array(frames), np.array(frames) / 10.0, np.array(ids), boxes,
                         np.full(n, 0.9), points, confidence)


def test_the_filtered_table_fills_a_missed_frame_of_a_track_and_keeps_empty_frames():
    points = np.array([[[10.0, 10.0], [20.0, 10.0]]] * 4) + np.arange(4)[:, None, None]
    table = table_of([0, 1, 3, 4], [1, 1, 1, 1], points, np.full((4, 2), 0.8))
    table.frames = np.array([0, 1, 3, 4])
    with_empty = LandmarkTable(table.keypoints, np.array([0, 1, 2, 3, 4]), np.arange(5) / 10.0,
                               np.array([1, 1, NO_FACE, 1, 1]), np.insert(table.boxes, 2, np.nan, axis=0),
                               np.insert(table.scores, 2, np.nan), np.insert(table.points, 2, np.nan, axis=0),
                               np.insert(table.confidence, 2, np.nan, axis=0))
    filtered = filter_table(with_empty, FilterOptions(window=0, max_gap=2))
    assert filtered.frames.tolist() == [0, 1, 2, 3, 4] and filtered.face_ids.tolist() == [1] * 5
    np.testing.assert_allclose(filtered.points[2], (points[1] + points[2]) / 2)  # frame 2 filled halfway
    assert (filtered.confidence[2] == 0).all() and filtered.time_s[2] == pytest.approx(0.2)
