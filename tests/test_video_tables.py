"""The tables a video's landmarks go to: the flat CSV and DeepLabCut's multi-animal table."""

import csv

import numpy as np
import pytest

from analysis.tables import LandmarkTable, NO_FACE, read_flat_table, write_dlc_table, write_flat_table
from basics.errors import DataError


def a_table() -> LandmarkTable:
    """Frame 0: faces 1 and 2; frame 1: face 2 with one point not found; frame 2: no face."""
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 100, size=(4, 2, 2)).round(3)
    confidence = rng.uniform(0, 1, size=(4, 2)).round(3)
    points[2, 1], confidence[2, 1] = np.nan, np.nan
    points[3], confidence[3] = np.nan, np.nan
    boxes = np.tile([1.0, 2.0, 30.0, 40.0], (4, 1))
    boxes[3] = np.nan
    return LandmarkTable(["eye_l", "eye_r"], np.array([0, 0, 1, 2]), np.array([0.0, 0.0, 0.1, 0.2]),
                         np.array([1, 2, 2, NO_FACE]), boxes, np.array([0.9, 0.8, 0.7, np.nan]), points, confidence)


def test_the_flat_table_reads_back_as_written(tmp_path):
    table = a_table()
    write_flat_table(tmp_path / "t.csv", table)
    again = read_flat_table(tmp_path / "t.csv")
    assert again.keypoints == table.keypoints and again.face_ids.tolist() == table.face_ids.tolist()
    np.testing.assert_allclose(again.points, table.points, atol=1e-3)
    row = (tmp_path / "t.csv").read_text().splitlines()[4].split(",")
    np.testing.assert_allclose(again.confidence, table.confidence, atol=1e-3)
    assert row[:3] == ["2", "0.2000", ""] and set(row[3:]) == {""}  # a frame without a face: a row, empty cells


def test_the_deeplabcut_table_has_its_four_header_rows_and_the_flat_tables_values(tmp_path):
    table = a_table()
    write_flat_table(tmp_path / "flat.csv", table)
    flat = read_flat_table(tmp_path / "flat.csv")
    write_dlc_table(tmp_path / "dlc.csv", flat, "my_model", frame_count=5)
    with open(tmp_path / "dlc.csv", newline="") as f:
        rows = list(csv.reader(f))
    scorer, individuals, bodyparts, coords = rows[:4]
    assert [scorer[0], individuals[0], bodyparts[0], coords[0]] == ["scorer", "individuals", "bodyparts", "coords"]
    assert set(scorer[1:]) == {"my_model"} and individuals[1:] == ["face1"] * 6 + ["face2"] * 6
    assert bodyparts[1:] == ["eye_l"] * 3 + ["eye_r"] * 3 + ["eye_l"] * 3 + ["eye_r"] * 3
    assert coords[1:] == ["x", "y", "likelihood"] * 4
    data = rows[4:]
    assert [row[0] for row in data] == ["0", "1", "2", "3", "4"]  # every frame of the video, index = frame
    value = lambda text: float(text) if text else np.nan  # noqa: E731
    for frame_row, (frame, face_id, points, confidence) in [(0, (0, 1, flat.points[0], flat.confidence[0])),
                                                            (0, (0, 2, flat.points[1], flat.confidence[1])),
                                                            (1, (1, 2, flat.points[2], flat.confidence[2]))]:
        start = 1 + (face_id - 1) * 6
        got = np.array([value(v) for v in data[frame_row][start:start + 6]])
        np.testing.assert_allclose(got, np.column_stack([points, confidence]).ravel(), atol=1e-3)
    assert set(data[1][1:7]) == {""} and data[1][10:13] == ["", "", ""]  # face 1 and face 2's eye_r not found
    assert set(data[2][1:]) == {""} and set(data[4][1:]) == {""}  # no face in frame 2; frame 4: no row at all


def test_a_table_with_a_short_row_is_refused_naming_its_line(tmp_path):
    write_flat_table(tmp_path / "t.csv", a_table())
    lines = (tmp_path / "t.csv").read_text().splitlines()
    lines[2] = ",".join(lines[2].split(",")[:5])
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"t\.csv: line 3 has 5 cells, its header 14"):
        read_flat_table(tmp_path / "t.csv")
