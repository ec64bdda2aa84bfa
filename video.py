"""Landmarks in videos: every frame's faces found, followed from frame to frame and written as one
CSV per video (a row per frame and face, as DeepLabCut's tables), optionally a labelled video.

`analyze_video` is the loop; `VideoFrames` reads a video (a frame that cannot be decoded is
skipped and counted), `FaceTracker` gives each face an id that follows it, `OneEuroSmoother`
optionally smooths the landmarks over time, and `LandmarkTable` writes the CSV.
"""
from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from errors import DataError
from geometry import box_iou, greedy_match
from inference import Face, FaceLandmarker, save_region_crops
from visualize import draw_faces

os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # the undecodable frames are counted and reported here
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
MAX_FAILED_READS = 25  # reads in a row that give no frame: the end of the stream


class VideoFrames:
    """The frames of a video file: iterating yields (index, time in s, RGB frame) for every frame
    that can be decoded; `undecodable` counts those that cannot (read failures followed by more
    frames; failures at the end are the end of the stream). The frame count the container states
    is only a guess for the progress bar: the video is read until it gives no more frames."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.capture = cv2.VideoCapture(str(path))
        if not self.capture.isOpened():
            raise DataError(f"{path}: cannot open it as a video")
        self.fps = self.capture.get(cv2.CAP_PROP_FPS) or 25.0
        self.count = int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.undecodable = 0

    def __iter__(self):
        index, pending_failures = -1, 0
        try:
            while pending_failures < MAX_FAILED_READS:
                ok, frame = self.capture.read()
                if not ok:
                    pending_failures += 1
                    continue
                msec = self.capture.get(cv2.CAP_PROP_POS_MSEC)  # the frame's time stamp
                self.undecodable += pending_failures
                index = max(index + 1 + pending_failures, round(msec * self.fps / 1000))
                pending_failures = 0
                yield index, msec / 1000 if msec > 0 else index / self.fps, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        finally:
            self.capture.release()


def box_from_landmarks(landmarks: np.ndarray, reference: Face) -> np.ndarray:
    """A face box for `landmarks` placed as `reference`'s box (the face as last detected) is around
    its landmarks: the same offset from their centre and the same size relative to their spread."""
    centre, spread = landmarks.mean(axis=0), landmarks.std(axis=0).mean() + 1e-6
    ref_centre, ref_spread = reference.landmarks.mean(axis=0), reference.landmarks.std(axis=0).mean() + 1e-6
    corners = (reference.box.reshape(2, 2) - ref_centre) * (spread / ref_spread) + centre
    return corners.reshape(4)


@dataclass
class FaceTracker:
    """Gives every face an id that follows it across frames: a new detection takes the id of the
    track whose last box it overlaps most (IoU >= min_iou, one-to-one, best pairs first), the
    others new ids; a face followed from the previous frame keeps its id. A track not seen for
    `patience` frames ends; its id is never reused."""
    min_iou: float = 0.3
    patience: int = 10
    tracks: dict[int, tuple[int, Face]] = field(default_factory=dict)  # id -> (last frame, face)
    next_id: int = 1

    def assign(self, faces: list[Face], frame: int) -> None:
        for face in faces:
            if face.face_id is not None:  # followed by its landmarks
                self.tracks[face.face_id] = (frame, face)
        self.tracks = {i: t for i, t in self.tracks.items() if frame - t[0] <= self.patience}
        new = [face for face in faces if face.face_id is None]
        free = [i for i, (last, _) in self.tracks.items() if last != frame]
        if new and free:
            overlap = box_iou(np.stack([f.box for f in new]), np.stack([self.tracks[i][1].box for i in free]))
            for row, column in greedy_match(overlap, self.min_iou):
                new[row].face_id = free[column]
        for face in new:
            if face.face_id is None:
                face.face_id, self.next_id = self.next_id, self.next_id + 1
            self.tracks[face.face_id] = (frame, face)


@dataclass
class OneEuroSmoother:
    """The One Euro filter (Casiez et al., CHI 2012) on every landmark of every track: a low-pass
    whose cut-off rises with speed, so slow jitter is smoothed and fast motion kept. `cutoff` (Hz)
    is the cut-off at rest, `beta` how fast it rises with speed (per landmark pixel per second)."""
    cutoff: float = 1.0
    beta: float = 0.05
    derivative_cutoff: float = 1.0
    state: dict[int, tuple[float, np.ndarray, np.ndarray]] = field(default_factory=dict)  # id -> (t, x, dx)

    @staticmethod
    def alpha(cutoff: float | np.ndarray, dt: float) -> float | np.ndarray:
        """The smoothing factor of a first-order low-pass at `cutoff` Hz for a step of dt seconds."""
        return 1.0 / (1.0 + 1.0 / (2 * math.pi * cutoff * dt))

    def forget(self, track_ids: set[int]) -> None:
        """Drop the state of tracks that have ended."""
        self.state = {i: v for i, v in self.state.items() if i in track_ids}

    def smooth(self, face: Face, t: float) -> None:
        if face.face_id not in self.state:
            self.state[face.face_id] = (t, face.landmarks.copy(), np.zeros_like(face.landmarks))
            return
        t0, x0, dx0 = self.state[face.face_id]
        dt = max(t - t0, 1e-3)
        dx = dx0 + self.alpha(self.derivative_cutoff, dt) * ((face.landmarks - x0) / dt - dx0)
        cutoff = self.cutoff + self.beta * np.linalg.norm(dx, axis=-1, keepdims=True)  # (K, 1)
        x = x0 + self.alpha(cutoff, dt) * (face.landmarks - x0)
        face.landmarks = x
        self.state[face.face_id] = (t, x, dx)


class LandmarkTable:
    """The per-video CSV: frame, time_s, face_id, the box, the detector's score, then x, y and
    confidence of every landmark in columns `<keypoint>_x`, `<keypoint>_y`, `<keypoint>_conf`."""

    def __init__(self, path: Path, keypoints: list[str]):
        self.file = open(path, "w", newline="", encoding="utf-8")
        self.writer = csv.writer(self.file)
        self.writer.writerow(["frame", "time_s", "face_id", "box_x1", "box_y1", "box_x2", "box_y2", "score",
                              *[f"{name}_{part}" for name in keypoints for part in ("x", "y", "conf")]])

    def write(self, frame: int, time_s: float, face: Face) -> None:
        values = np.column_stack([face.landmarks, face.confidence]).ravel()
        self.writer.writerow([frame, f"{time_s:.4f}", face.face_id, *(f"{v:.2f}" for v in face.box),
                              f"{face.score:.4f}", *(f"{v:.3f}" for v in values)])

    def close(self) -> None:
        self.file.close()


@dataclass
class VideoOptions:
    """How to analyse a video: detector every `detect_every` frames (the faces follow their
    landmarks in between), One Euro smoothing at `smooth_cutoff` Hz (0: off), a labelled video,
    region crops."""
    detect_every: int = 1
    smooth_cutoff: float = 0.0
    save_video: bool = False
    regions_size: int = 0  # > 0: save each face's region crops of this side, per frame
    min_confidence: float = 0.1  # a followed face whose mean landmark confidence falls below this is dropped


def frame_faces(landmarker: FaceLandmarker, frame: np.ndarray, index: int, previous: list[Face],
                options: VideoOptions) -> list[Face]:
    """A frame's faces: the detector's on detection frames (and when no face is being followed),
    else the previous faces followed by their landmarks (and dropped once their confidence fails)."""
    if index % options.detect_every == 0 or not previous:
        return landmarker.faces([frame])[0]
    anchors = [before.anchor or before for before in previous]
    boxes = np.stack([box_from_landmarks(before.landmarks, anchor) for before, anchor in zip(previous, anchors)])
    faces = landmarker.faces([frame], [boxes])[0]
    for face, before, anchor in zip(faces, previous, anchors):
        face.score, face.face_id, face.anchor = before.score, before.face_id, anchor
    return [face for face in faces if face.confidence.mean() >= options.min_confidence]


@dataclass
class VideoSummary:
    frames: int
    undecodable: int
    face_rows: int
    seconds: float
    outputs: list[Path]


def open_video_writer(path: Path, fps: float, frame: np.ndarray) -> cv2.VideoWriter:
    """An MP4 writer for frames like `frame`, or DataError if OpenCV cannot write one here."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (frame.shape[1], frame.shape[0]))
    if not writer.isOpened():
        raise DataError(f"{path}: OpenCV cannot write an MP4 video here (no mp4v encoder)")
    return writer


def analyze_video(path: Path, landmarker: FaceLandmarker, out_stem: Path, options: VideoOptions) -> VideoSummary:
    """Landmarks of every face in every frame of `path` into OUT_STEM.csv (and OUT_STEM_labelled.mp4)."""
    frames = VideoFrames(path)
    csv_path, video_path = Path(f"{out_stem}.csv"), Path(f"{out_stem}_labelled.mp4")
    table = LandmarkTable(csv_path, landmarker.predictor.meta["keypoints"])
    writer, tracker, smoother = None, FaceTracker(), OneEuroSmoother(options.smooth_cutoff)
    faces, rows, decoded, start = [], 0, 0, time.time()
    try:
        for index, time_s, frame in tqdm(frames, total=frames.count or None, desc=path.name, unit="frame",
                                         dynamic_ncols=True):
            decoded += 1
            faces = frame_faces(landmarker, frame, index, faces, options)
            tracker.assign(faces, index)
            smoother.forget(set(tracker.tracks))
            for face in faces:
                if options.smooth_cutoff > 0:
                    smoother.smooth(face, time_s)
                table.write(index, time_s, face)
            rows += len(faces)
            if options.regions_size:
                save_region_crops(frame, faces, landmarker.predictor.meta, Path(f"{out_stem}_regions"),
                                  f"frame{index:06d}_", options.regions_size)
            if options.save_video:
                writer = writer or open_video_writer(video_path, frames.fps, frame)
                writer.write(cv2.cvtColor(draw_faces(frame, faces, enlarge=False), cv2.COLOR_RGB2BGR))
    finally:
        table.close()
        if writer is not None:
            writer.release()
    if decoded == 0:
        csv_path.unlink()
        raise DataError(f"{path}: no frame could be decoded (an empty or broken video)")
    return VideoSummary(decoded, frames.undecodable, rows, time.time() - start,
                        [csv_path] + ([video_path] if writer else []))
