"""Face ids follow the faces: through missed detections, a short occlusion and two faces crossing."""

import numpy as np

from analysis.tracking import FaceTracker
from inference import Face


def face(box, face_id=None) -> Face:
    return Face(np.asarray(box, dtype=float), 0.9, np.zeros((3, 2)), np.ones(3), face_id)


def boxes_at(x: float, y: float = 0.0, side: float = 20.0) -> list[float]:
    return [x, y, x + side, y + side]


def test_ids_follow_faces_listed_in_any_order_and_are_never_reused():
    tracker = FaceTracker(max_lost=2)
    first = [face(boxes_at(0)), face(boxes_at(50))]
    tracker.assign(first, 0)
    second = [face(boxes_at(52)), face(boxes_at(1))]  # the same two faces, listed the other way round
    tracker.assign(second, 1)
    assert [f.face_id for f in first] == [1, 2] and [f.face_id for f in second] == [2, 1]
    for frame in range(2, 12):  # followed by their landmarks, as with --detect-every 10
        tracker.assign([face(f.box, face_id=f.face_id) for f in second], frame)
    detected = [face(boxes_at(1)), face(boxes_at(200))]
    tracker.assign(detected, 12)
    assert [f.face_id for f in detected] == [1, 3]  # face 1 kept its id; a new face gets a new one
    tracker.assign([face(boxes_at(52))], 16)  # face 2 was last seen at frame 11: its track ended
    assert tracker.next_id == 5


def test_a_face_missed_for_some_frames_while_moving_keeps_its_id():
    tracker = FaceTracker(max_lost=10)
    ids = []
    for frame in range(30):
        if 10 <= frame < 17:  # not detected for 7 frames, while it moves on at 6 px a frame
            tracker.assign([], frame)
            continue
        found = [face(boxes_at(6 * frame))]
        tracker.assign(found, frame)
        ids.append(found[0].face_id)
    assert set(ids) == {1}  # with the box at its last place, IoU after 7 x 6 px of a 20 px box would be 0


def test_two_faces_crossing_keep_their_ids():
    """Two faces pass each other along x, one behind the other for three frames (one detection)."""
    tracker = FaceTracker()
    ids_left, ids_right = [], []
    for frame in range(40):
        a, b = boxes_at(4 * frame, 5), boxes_at(156 - 4 * frame, 0)  # they meet at frame 19.5
        found = [face(a), face(b)] if abs(frame - 19.5) > 2 else [face(b)]  # a hidden behind b
        tracker.assign(found, frame)
        if len(found) == 2:
            ids_left.append(found[0].face_id)
            ids_right.append(found[1].face_id)
    assert set(ids_left) == {1} and set(ids_right) == {2}
