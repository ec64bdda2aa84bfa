"""Face tracks across video frames: each face keeps one id through a missed detection, a short
occlusion and another face crossing it.

A track predicts its box forward at constant velocity (the velocity an exponential average of
the box's motion per frame, as a steady-state Kalman filter of position and velocity would
give). Each frame's new detections are assigned to the predictions one-to-one by the Hungarian
method (scipy.optimize.linear_sum_assignment) on 1 - IoU, an assignment counting only at IoU >=
`min_iou`. A track that finds no detection coasts on its prediction for up to `max_lost`
frames, during which a detection can take it up again; then it ends, and its id is never
reused. Faces followed by their landmarks (tools/predict.py --detect-every) keep their id.

Why not a tracking library: BoxMOT (AGPL-3.0, and a torch stack of its own) is restrictive;
norfair and motpy would fit, but this is the SORT idea in some 60 lines on boxes the detector
already gives, with scipy, which the project needs anyway.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from basics.geometry import box_iou
from inference import Face


@dataclass
class Track:
    """One face's track: its last box (x1, y1, x2, y2), velocity per frame and when it was last seen."""
    face_id: int
    box: np.ndarray
    last_frame: int
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))

    def predicted(self, frame: int) -> np.ndarray:
        return self.box + self.velocity * (frame - self.last_frame)

    def update(self, box: np.ndarray, frame: int, smoothing: float) -> None:
        gap = max(1, frame - self.last_frame)
        self.velocity = (1 - smoothing) * self.velocity + smoothing * (box - self.box) / gap
        self.box, self.last_frame = np.asarray(box, dtype=np.float64), frame


@dataclass
class FaceTracker:
    """Gives every face an id that follows it across frames (see the module's docstring)."""
    min_iou: float = 0.2
    max_lost: int = 30
    velocity_smoothing: float = 0.5  # weight of the latest motion in the velocity average
    tracks: dict[int, Track] = field(default_factory=dict)
    next_id: int = 1

    def assign(self, faces: list[Face], frame: int) -> None:
        """Set `face_id` on each face of `frame` (frames in increasing order)."""
        self.tracks = {i: t for i, t in self.tracks.items() if frame - t.last_frame <= self.max_lost}
        for face in faces:
            if face.face_id is not None and face.face_id in self.tracks:  # followed by its landmarks
                self.tracks[face.face_id].update(face.box, frame, self.velocity_smoothing)
        new = [face for face in faces if face.face_id is None]
        free = [i for i, t in self.tracks.items() if t.last_frame != frame]
        if new and free:
            predicted = np.stack([self.tracks[i].predicted(frame) for i in free])
            overlap = box_iou(np.stack([f.box for f in new]), predicted)
            rows, columns = linear_sum_assignment(1 - overlap)
            for row, column in zip(rows, columns):
                if overlap[row, column] >= self.min_iou:
                    new[row].face_id = free[column]
                    self.tracks[free[column]].update(new[row].box, frame, self.velocity_smoothing)
        for face in new:
            if face.face_id is None:
                face.face_id, self.next_id = self.next_id, self.next_id + 1
                self.tracks[face.face_id] = Track(face.face_id, np.asarray(face.box, dtype=np.float64), frame)
