"""Landmarks in videos, as DeepLabCut's analysis does it: the analysis writes the table; filtering
reads a table and writes another beside it; the labelled video is drawn from a table.

`analyze_video` reads a video (`VideoFrames`), passes its frames through the face detector and
the landmark model a batch at a time, gives each face a track id (tracking.py) and writes, into
a `outputs.Staging` folder: NAME.csv (the flat table, row by row, so a long video never sits in
memory), NAME_dlc.csv (DeepLabCut's table), with filtering NAME_filtered.csv and
NAME_dlc_filtered.csv (filtering.py), with a labelled video NAME_labelled.mp4 (`label_video`),
and NAME_summary.json, the mark of a complete set. tools/predict.py moves them into place.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from analysis.filtering import FilterOptions, filter_table
from analysis.tables import FlatTableWriter, LandmarkTable, NO_FACE, read_flat_table, write_dlc_table, write_flat_table
from analysis.tracking import FaceTracker
from basics.errors import DataError, Interrupted
from basics.geometry import box_for_landmarks
from basics.outputs import Staging, write_json
from basics.run_utils import StopRequest
from basics.visualize import draw_faces
from inference import Face, FaceLandmarker, save_region_crops

os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # the undecodable frames are counted and reported here
MAX_FAILED_READS = 25  # reads in a row that give no frame: the end of the stream
PLAUSIBLE_FPS = (1.0, 1000.0)  # a container's frame rate outside this is not believed
DEFAULT_FPS = 25.0


class VideoFrames:
    """The frames of a video file: iterating yields (position, time in s, RGB frame) for every frame
    that can be decoded, `position` counting every frame of the file, decodable or not (0, 1, 2,
    ...), so that row k of a table is frame k of the file and of its labelled video; `time_s`
    is the frame's time stamp (variable frame rates keep their times). After iterating, `read`
    frames were decoded, `undecodable` could not be (read failures followed by more frames), and
    `claimed` is the frame count the container states."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.capture = cv2.VideoCapture(str(path))
        if not self.capture.isOpened():
            raise DataError(f"{path}: cannot open it as a video")
        self.container_fps = float(self.capture.get(cv2.CAP_PROP_FPS))
        self.fps_trusted = PLAUSIBLE_FPS[0] <= self.container_fps <= PLAUSIBLE_FPS[1]  # False for NaN
        self.fps = self.container_fps if self.fps_trusted else DEFAULT_FPS
        claimed = self.capture.get(cv2.CAP_PROP_FRAME_COUNT)
        self.claimed = int(claimed) if math.isfinite(claimed) and 0 < claimed < 2**31 else 0
        self.read = self.undecodable = self.positions = 0

    def __iter__(self):
        pending_failures = 0
        try:
            while pending_failures < MAX_FAILED_READS:
                ok, frame = self.capture.read()
                if not ok:
                    pending_failures += 1
                    continue
                msec = self.capture.get(cv2.CAP_PROP_POS_MSEC)  # the frame's time stamp
                position = self.positions + pending_failures
                self.undecodable += pending_failures
                self.read, self.positions, pending_failures = self.read + 1, position + 1, 0
                stamped = self.fps_trusted and math.isfinite(msec) and (msec > 0 or position == 0)
                yield position, (msec / 1000 if stamped else position / self.fps), cv2.cvtColor(frame,
                                                                                               cv2.COLOR_BGR2RGB)
        finally:
            self.capture.release()

    def problems(self) -> list[str]:
        """What went wrong in reading, one sentence each (after iterating)."""
        found = []
        if not self.fps_trusted:
            found.append(f"its container states {self.container_fps:g} frames/s, which cannot be right: time_s "
                         f"assumes {DEFAULT_FPS:g} frames/s")
        if self.undecodable:
            found.append(f"{self.undecodable} frame(s) could not be decoded (rows without faces)")
        if self.claimed > self.positions:
            found.append(f"the file claims {self.claimed} frames, {self.positions} were reached: the last "
                         f"{self.claimed - self.positions} could not be read (a truncated file?)")
        return found


def batches(frames: VideoFrames, size: int):
    """The frames in lists of `size` (the last one shorter)."""
    batch = []
    for item in frames:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass
class VideoOptions:
    """How to analyse a video: the detector every `detect_every` frames (the faces follow their
    landmarks in between), `batch_size` frames per pass, region crops, the filtered tables
    (`filter`: None for none), a labelled video drawn from the (filtered) table with points of
    confidence at least `pcutoff`, and the scorer named in DeepLabCut's table."""
    detect_every: int = 1
    batch_size: int = 8
    regions_size: int = 0  # > 0: save each face's region crops of this side, per frame
    min_confidence: float = 0.1  # a followed face whose mean landmark confidence falls below this is dropped
    filter: FilterOptions | None = field(default_factory=FilterOptions)
    save_video: bool = False
    pcutoff: float = 0.1
    scorer: str = "dog-facial-landmarks"
    produced_by: dict = field(default_factory=dict)  # recorded in NAME_summary.json (tools/predict.py)


def followed_faces(landmarker: FaceLandmarker, frame: np.ndarray, previous: list[Face],
                   options: VideoOptions) -> list[Face]:
    """The previous frame's faces followed by their landmarks into `frame` (those whose confidence
    falls below options.min_confidence are dropped). Each box sits around the landmarks as the
    face's box sat around its landmarks when last detected (its anchor)."""
    anchors = [before.anchor or before for before in previous]
    boxes = np.stack([box_for_landmarks(before.landmarks, reference=(anchor.box, anchor.landmarks))
                      for before, anchor in zip(previous, anchors)])
    faces = landmarker.faces([frame], [boxes])[0]
    for face, before, anchor in zip(faces, previous, anchors):
        face.score, face.face_id, face.anchor = before.score, before.face_id, anchor
    return [face for face in faces if face.confidence.mean() >= options.min_confidence]


def batch_faces(landmarker: FaceLandmarker, batch: list, previous: list[Face], options: VideoOptions
                ) -> list[list[Face]]:
    """The faces of each frame of a batch: detected on detection frames (all of the batch's in one
    pass of each model) and where no face is being followed, else followed by their landmarks."""
    detect = [i for i, (position, _, _) in enumerate(batch) if position % options.detect_every == 0]
    found = dict(zip(detect, landmarker.faces([batch[i][2] for i in detect]))) if detect else {}
    result = []
    for i, (_, _, frame) in enumerate(batch):
        if i not in found:
            found[i] = followed_faces(landmarker, frame, previous, options) if previous else landmarker.faces([frame])[0]
        previous = found[i]
        result.append(found[i])
    return result


@dataclass
class VideoSummary:
    """What a video's analysis found and wrote (NAME_summary.json holds the same)."""
    frames: int
    seconds: float
    problems: list[str]
    record: dict


def analyze_video(path: Path, landmarker: FaceLandmarker, staging: Staging, stem: str, options: VideoOptions,
                  stop: StopRequest | None = None) -> VideoSummary:
    """Every frame's faces and landmarks into the staging folder's tables (see the module's docstring)."""
    frames = VideoFrames(path)
    meta = landmarker.predictor.meta
    raw = staging.path(f"{stem}.csv")
    writer, tracker, faces = FlatTableWriter(raw, meta["keypoints"]), FaceTracker(), []
    with_face, face_rows, confidence_sum, next_position, start = 0, 0, 0.0, 0, time.time()
    try:
        bar = tqdm(batches(frames, options.batch_size), total=math.ceil(frames.claimed / options.batch_size) or None,
                   desc=path.name, unit="batch", dynamic_ncols=True)
        for batch in bar:
            if stop is not None and stop.signal_name is not None:
                raise Interrupted(f"{stop.signal_name} while analysing {path}")
            for (position, time_s, frame), faces in zip(batch, batch_faces(landmarker, batch, faces, options)):
                for undecodable in range(next_position, position):  # a row for every frame of the file
                    writer.write_faces(undecodable, undecodable / frames.fps, [])
                next_position = position + 1
                tracker.assign(faces, position)
                writer.write_faces(position, time_s, faces)
                with_face += bool(faces)
                face_rows += len(faces)
                confidence_sum += sum(float(face.confidence.mean()) for face in faces)
                if options.regions_size and faces:
                    save_region_crops(frame, faces, meta, staging.path(f"{stem}_regions"), f"frame{position:06d}_",
                                      options.regions_size)
            bar.set_postfix(frames_per_s=f"{frames.read / (time.time() - start):.1f}", refresh=False)
    finally:
        writer.close()
    if frames.read == 0:
        raise DataError(f"{path}: no frame could be decoded (an empty or broken video)")
    seconds = time.time() - start
    table = read_flat_table(raw, meta["keypoints"])
    write_dlc_table(staging.path(f"{stem}_dlc.csv"), table, options.scorer, frames.positions)
    drawn = table
    if options.filter is not None:
        drawn = filter_table(table, options.filter)
        write_flat_table(staging.path(f"{stem}_filtered.csv"), drawn)
        write_dlc_table(staging.path(f"{stem}_dlc_filtered.csv"), drawn, options.scorer, frames.positions)
    if options.save_video:
        label_video(path, drawn, staging.path(f"{stem}_labelled.mp4"), options.pcutoff, frames.fps)
    record = {"video": str(path), "frames_read": frames.read, "frames_claimed": frames.claimed,
              "frame_positions": frames.positions, "undecodable_frames": frames.undecodable,
              "container_fps": frames.container_fps, "fps": frames.fps, "frames_with_a_face": with_face,
              "faces_per_frame": face_rows / frames.read, "face_ids": int(len({*table.face_ids.tolist()} - {NO_FACE})),
              "mean_confidence": confidence_sum / face_rows if face_rows else None,
              "frames_per_s": frames.read / seconds, "seconds": seconds, "problems": frames.problems(),
              "filter": vars(options.filter) if options.filter is not None else None,
              "detect_every": options.detect_every, "batch_size": options.batch_size,
              "produced_by": options.produced_by}
    write_json(staging.path(f"{stem}_summary.json"), record, indent=1)
    return VideoSummary(frames.read, seconds, frames.problems(), record)


def open_video_writer(path: Path, fps: float, frame: np.ndarray) -> cv2.VideoWriter:
    """An MP4 writer for frames like `frame`, or DataError if OpenCV cannot write one here."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (frame.shape[1], frame.shape[0]))
    if not writer.isOpened():
        raise DataError(f"{path}: OpenCV cannot write an MP4 video here (mp4v at {fps:g} frames/s)")
    return writer


def faces_by_frame(table: LandmarkTable, pcutoff: float) -> dict[int, list[Face]]:
    """Each frame's faces of a table, landmarks of confidence below `pcutoff` (or not found) as NaN."""
    faces: dict[int, list[Face]] = {}
    for frame, _, face_id, box, score, points, confidence in table.rows():
        if face_id == NO_FACE:
            continue
        shown = np.where((confidence >= pcutoff)[:, None], points, np.nan)
        faces.setdefault(int(frame), []).append(Face(box, float(score) if math.isfinite(score) else math.nan, shown,
                                                     confidence, int(face_id)))
    return faces


def label_video(video: Path, table: LandmarkTable, out: Path, pcutoff: float, fps: float | None = None) -> int:
    """Draw a table's faces (boxes, ids, landmarks of confidence >= pcutoff) on the video's frames
    into `out`, frame k of the table on frame k of the file; returns the frames written."""
    frames, faces = VideoFrames(video), faces_by_frame(table, pcutoff)
    writer, written = None, 0
    try:
        for position, _, frame in tqdm(frames, total=frames.claimed or None, desc=f"drawing {out.name}",
                                       unit="frame", dynamic_ncols=True):
            writer = writer or open_video_writer(out, fps or frames.fps, frame)
            writer.write(cv2.cvtColor(draw_faces(frame, faces.get(position, []), enlarge=False), cv2.COLOR_RGB2BGR))
            written += 1
    finally:
        if writer is not None:
            writer.release()
    if written == 0:
        raise DataError(f"{video}: no frame could be decoded to draw on")
    return written
