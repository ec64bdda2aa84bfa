import numpy as np
import pytest

from conftest import break_video_frame, write_video
from inference import Face
from video import FaceTracker, OneEuroSmoother, VideoFrames, box_from_landmarks


def face(box, landmarks=None, face_id=None) -> Face:
    landmarks = np.zeros((3, 2)) if landmarks is None else np.asarray(landmarks, dtype=float)
    return Face(np.asarray(box, dtype=float), 0.9, landmarks, np.ones(len(landmarks)), face_id)


def test_a_followed_box_moves_and_scales_with_the_landmarks():
    detected = face([10, 20, 50, 70], [[20, 30], [40, 30], [30, 55]])
    moved = (detected.landmarks - [30, 38.33]) * 1.5 + [30 + 7, 38.33 - 4]  # 1.5 times larger, moved (7, -4)
    box = box_from_landmarks(moved, detected)
    centre, size = (box[:2] + box[2:]) / 2, box[2:] - box[:2]
    np.testing.assert_allclose(size, [60, 75], atol=1e-6)
    np.testing.assert_allclose(centre, np.array([30, 45]) + (np.array([30, 45]) - [30, 38.33]) * 0.5 + [7, -4],
                               atol=0.01)


def test_ids_follow_faces_and_are_never_reused():
    tracker = FaceTracker(patience=2)
    first = [face([0, 0, 10, 10]), face([50, 0, 60, 10])]
    tracker.assign(first, 0)
    assert [f.face_id for f in first] == [1, 2]
    second = [face([52, 1, 62, 11]), face([1, 1, 11, 11])]  # the same two faces, listed the other way round
    tracker.assign(second, 1)
    assert [f.face_id for f in second] == [2, 1]
    for frame in range(2, 12):  # followed by their landmarks for long, as with --detect-every 10
        followed = [face(f.box, face_id=f.face_id) for f in second]
        tracker.assign(followed, frame)
    detected = [face([1, 0, 11, 10]), face([200, 0, 210, 10])]
    tracker.assign(detected, 12)
    assert [f.face_id for f in detected] == [1, 3]  # face 1 kept its id; a new face gets a new one
    tracker.assign([face([52, 1, 62, 11])], 16)  # face 2 was last seen at frame 11: its track ended
    assert tracker.next_id == 5


def test_one_euro_smoothing_calms_jitter_and_keeps_steady_motion():
    rng = np.random.default_rng(0)
    smoother, still_error, moving_lag = OneEuroSmoother(cutoff=1.0, beta=0.05), [], []
    for frame in range(100):
        t = frame / 25
        noisy = face([0, 0, 1, 1], np.array([[50.0, 50.0]]) + rng.normal(0, 1.0, size=(1, 2)), face_id=1)
        smoother.smooth(noisy, t)
        still_error.append(np.abs(noisy.landmarks - 50).mean())
        moving = face([0, 0, 1, 1], np.array([[100 * t, 0.0]]), face_id=2)  # 100 px/s
        smoother.smooth(moving, t)
        moving_lag.append(100 * t - moving.landmarks[0, 0])
    assert np.mean(still_error[25:]) < 0.5 * 0.8  # the raw noise's mean |error| is 0.8 px
    assert 0 < np.mean(moving_lag[50:]) < 3.0  # a fast face lags by a few pixels only


def test_frames_after_an_undecodable_one_keep_their_index_and_time(tmp_path):
    frames = [np.full((32, 48, 3), 20 * i, np.uint8) for i in range(8)]
    video = write_video(tmp_path / "clip.avi", frames)
    break_video_frame(video, 3)
    reader = VideoFrames(video)
    read = [(index, time_s, int(frame.mean())) for index, time_s, frame in reader]
    assert [index for index, _, _ in read] == [0, 1, 2, 4, 5, 6, 7] and reader.undecodable == 1
    assert [time_s for _, time_s, _ in read] == pytest.approx([0, 0.1, 0.2, 0.4, 0.5, 0.6, 0.7])
    assert [brightness for _, _, brightness in read] == pytest.approx([20 * i for i in (0, 1, 2, 4, 5, 6, 7)], abs=3)
