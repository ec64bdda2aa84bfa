"""The tables a video's landmarks are written in, and read back from.

- The flat table (NAME.csv): one row per frame and face, `frame, time_s, face_id, box_x1, box_y1,
  box_x2, box_y2, score`, then `<keypoint>_x, <keypoint>_y, <keypoint>_conf` for every landmark;
  a frame where no face was found has one row with its frame and time and the rest empty.
  `frame` is the frame's position in the file (0, 1, 2, ...), `time_s` its time stamp.
  pandas.read_csv reads it as it is.
- The DeepLabCut table (NAME_dlc.csv): DeepLabCut's multi-animal layout, which `movement`,
  DeepLabCut, Anipose, SimBA and keypoint-moseq read: four header rows (scorer / individuals =
  face ids / bodyparts = keypoint names / coords = x, y, likelihood), then one row per frame,
  its first cell the frame, empty cells where a face was not found. It loads with
  `movement.io.load_poses.from_dlc_file(path, fps=...)` and `pandas.read_csv(path, header=[0, 1,
  2, 3], index_col=0)`.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from basics.errors import DataError
from inference import Face

BOX_COLUMNS = ["box_x1", "box_y1", "box_x2", "box_y2"]
NO_FACE = -1  # face_id of a frame's row that holds no face


def flat_header(keypoints: list[str]) -> list[str]:
    return ["frame", "time_s", "face_id", *BOX_COLUMNS, "score",
            *[f"{name}_{part}" for name in keypoints for part in ("x", "y", "conf")]]


def number(value: float, digits: int) -> str:
    """A table cell: the number rounded, or empty where it is not finite (not found)."""
    return f"{value:.{digits}f}" if math.isfinite(value) else ""


@dataclass
class LandmarkTable:
    """A flat table in memory, one entry per row: frames (N,), time_s (N,), face_ids (N; NO_FACE for
    a frame without a face), boxes (N, 4), scores (N,), points (N, K, 2), confidence (N, K);
    NaN where a value is empty."""
    keypoints: list[str]
    frames: np.ndarray
    time_s: np.ndarray
    face_ids: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    points: np.ndarray
    confidence: np.ndarray

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def frame_times(self) -> dict[int, float]:
        return dict(zip(self.frames.tolist(), self.time_s.tolist()))

    def rows(self):
        """Each row as (frame, time_s, face_id, box, score, points, confidence)."""
        return zip(self.frames, self.time_s, self.face_ids, self.boxes, self.scores, self.points, self.confidence)


class FlatTableWriter:
    """Writes the flat table row by row as the frames are analysed (a long video never sits in memory)."""

    def __init__(self, path: Path, keypoints: list[str]):
        self.file = open(path, "w", newline="", encoding="utf-8")
        self.writer = csv.writer(self.file)
        self.writer.writerow(flat_header(keypoints))
        self.num_keypoints = len(keypoints)

    def write(self, frame: int, time_s: float, face_id: int, box, score: float, points: np.ndarray,
              confidence: np.ndarray) -> None:
        values = np.column_stack([points, confidence]).ravel()
        self.writer.writerow([frame, number(time_s, 4), face_id if face_id != NO_FACE else "",
                              *(number(float(v), 2) for v in box), number(float(score), 4),
                              *(number(float(v), 3) for v in values)])

    def write_faces(self, frame: int, time_s: float, faces: list[Face]) -> None:
        """A frame's rows: one per face, or one empty row if it has none."""
        for face in faces:
            self.write(frame, time_s, face.face_id, face.box, face.score, face.landmarks, face.confidence)
        if not faces:
            empty = np.full((self.num_keypoints, 2), np.nan)
            self.write(frame, time_s, NO_FACE, [math.nan] * 4, math.nan, empty, empty[:, 0])

    def close(self) -> None:
        self.file.close()


def write_flat_table(path: Path, table: LandmarkTable) -> None:
    writer = FlatTableWriter(path, table.keypoints)
    try:
        for frame, time_s, face_id, box, score, points, confidence in table.rows():
            writer.write(int(frame), float(time_s), int(face_id), box, float(score), points, confidence)
    finally:
        writer.close()


def cell(text: str) -> float:
    return float(text) if text != "" else math.nan


def keypoints_of(header: list[str]) -> list[str]:
    """The keypoint names a flat table's header lists."""
    return [name.removesuffix("_x") for name in header[8::3]]


def read_flat_table(path: Path, keypoints: list[str] | None = None) -> LandmarkTable:
    """A flat table written by this project (of these keypoints, if given), or DataError naming the
    file and what is wrong (a row of another width: its line)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader)
            keypoints = keypoints if keypoints is not None else keypoints_of(header)
            if header != flat_header(keypoints):
                raise DataError(f"{path}: not a landmark table of this model's {len(keypoints)} landmarks "
                                "(its header differs)")
            rows = []
            for row in reader:
                if len(row) != len(header):
                    raise DataError(f"{path}: line {reader.line_num} has {len(row)} cells, its header "
                                    f"{len(header)} (a cut or edited table)")
                rows.append([cell(v) for v in row])
    except (OSError, UnicodeDecodeError, StopIteration, ValueError, csv.Error) as err:
        raise DataError(f"{path}: not a readable landmark table ({type(err).__name__}: {str(err)[:80]})") from None
    values = np.array(rows, dtype=np.float64).reshape(len(rows), len(header))
    k = len(keypoints)
    landmarks = values[:, 8:].reshape(-1, k, 3)
    ids = np.where(np.isnan(values[:, 2]), NO_FACE, values[:, 2]).astype(np.int64)
    return LandmarkTable(keypoints, values[:, 0].astype(np.int64), values[:, 1], ids, values[:, 3:7], values[:, 7],
                         landmarks[..., :2], landmarks[..., 2])


def write_dlc_table(path: Path, table: LandmarkTable, scorer: str, frame_count: int) -> None:
    """The DeepLabCut multi-animal table of `table`: a row for every frame 0 .. frame_count - 1,
    individuals face1, face2, ... in the order of their ids."""
    ids = sorted({int(i) for i in table.face_ids if i != NO_FACE})
    k = len(table.keypoints)
    column = {face_id: n for n, face_id in enumerate(ids)}
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        width = len(ids) * k * 3
        writer.writerow(["scorer", *[scorer] * width])
        writer.writerow(["individuals", *[f"face{i}" for i in ids for _ in range(k * 3)]])
        writer.writerow(["bodyparts", *[name for _ in ids for name in table.keypoints for _ in range(3)]])
        writer.writerow(["coords", *["x", "y", "likelihood"] * (len(ids) * k)])
        order = np.argsort(table.frames, kind="stable")
        position = 0
        for frame in range(frame_count):
            row = [""] * width
            while position < len(order) and table.frames[order[position]] == frame:
                i = order[position]
                if table.face_ids[i] != NO_FACE:
                    start = column[int(table.face_ids[i])] * k * 3
                    values = np.column_stack([table.points[i], table.confidence[i]]).ravel()
                    row[start:start + k * 3] = [number(float(v), 3) for v in values]
                position += 1
            writer.writerow([frame, *row])
