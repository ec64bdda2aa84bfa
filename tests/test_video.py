"""Videos: every frame's position and time, what went wrong in reading, and the labelled video."""

import json

import cv2
import numpy as np
import pytest

from analysis import video
from analysis.tables import NO_FACE, LandmarkTable, read_flat_table, write_flat_table
from analysis.video import VideoFrames, label_video
from conftest import break_video_frame, write_video
from tools import label_video as label_video_tool


def test_frames_after_an_undecodable_one_keep_their_position_and_time(tmp_path):
    frames = [np.full((32, 48, 3), 20 * i, np.uint8) for i in range(8)]
    video_path = write_video(tmp_path / "clip.avi", frames)
    break_video_frame(video_path, 3)
    reader = VideoFrames(video_path)
    read = [(position, time_s, int(frame.mean())) for position, time_s, frame in reader]
    assert [position for position, _, _ in read] == [0, 1, 2, 4, 5, 6, 7] and reader.undecodable == 1
    assert [time_s for _, time_s, _ in read] == pytest.approx([0, 0.1, 0.2, 0.4, 0.5, 0.6, 0.7])
    assert [brightness for _, _, brightness in read] == pytest.approx([20 * i for i in (0, 1, 2, 4, 5, 6, 7)], abs=3)


class FakeCapture:
    """cv2.VideoCapture of a file with `frames` decodable frames, time stamps `msec`, and the frame
    rate and frame count its container states."""

    def __init__(self, frames: int, msec: list[float], fps: float, claimed: int):
        self.frames, self.msec, self.fps, self.claimed, self.next = frames, msec, fps, claimed, 0

    def isOpened(self):
        return True

    def get(self, prop):
        import cv2
        return {cv2.CAP_PROP_FPS: self.fps, cv2.CAP_PROP_FRAME_COUNT: self.claimed,
                cv2.CAP_PROP_POS_MSEC: self.msec[self.next - 1] if self.next else 0.0}[prop]

    def read(self):
        if self.next >= self.frames:
            return False, None
        self.next += 1
        return True, np.full((16, 24, 3), self.next, np.uint8)

    def release(self):
        pass


def fake_video(monkeypatch, **kwargs) -> VideoFrames:
    monkeypatch.setattr(video.cv2, "VideoCapture", lambda path: FakeCapture(**kwargs))
    return VideoFrames("fake.mp4")


def test_the_frame_of_a_variable_frame_rate_video_is_its_position_and_its_time_its_stamp(monkeypatch):
    stamps = [0, 80, 120, 160, 240, 280, 400]  # ms: 40 ms frames with 80 and 120 ms ones between
    reader = fake_video(monkeypatch, frames=7, msec=stamps, fps=25.0, claimed=7)
    read = [(position, time_s) for position, time_s, _ in reader]
    assert [p for p, _ in read] == list(range(7))  # not 0, 2, 3, 4, 6, 7, 10 from the time stamps
    assert [t for _, t in read] == pytest.approx([s / 1000 for s in stamps]) and reader.problems() == []


def test_a_truncated_video_says_how_many_frames_it_claimed_and_how_many_were_read(monkeypatch):
    reader = fake_video(monkeypatch, frames=77, msec=[40.0 * i for i in range(77)], fps=25.0, claimed=198)
    assert len(list(reader)) == 77
    (problem,) = reader.problems()
    assert "the file claims 198 frames, 77 were reached: the last 121 could not be read" in problem


@pytest.mark.parametrize("fps", [90_000.0, 2.0**31, 0.0, float("nan")])
def test_an_absurd_frame_rate_is_not_believed(monkeypatch, tmp_path, fps):
    reader = fake_video(monkeypatch, frames=3, msec=[0.0, 0.01, 0.02], fps=fps, claimed=3)
    assert [t for _, t, _ in reader] == pytest.approx([0, 0.04, 0.08])  # 25 frames/s assumed, said so
    assert f"states {fps:g} frames/s, which cannot be right: time_s assumes 25 frames/s" in reader.problems()[0]
    assert reader.fps == 25.0  # and the labelled video can be written at it


def test_the_labelled_video_has_every_frame_of_the_file_and_draws_only_sure_points(tmp_path):
    frames = [np.full((48, 64, 3), 40, np.uint8) for _ in range(5)]
    video_path = write_video(tmp_path / "clip.avi", frames)
    points = np.array([[[20.0, 20.0], [40.0, 20.0]]] * 2)
    table = LandmarkTable(["a", "b"], np.array([1, 3]), np.array([0.1, 0.3]), np.array([1, 1]),
                          np.array([[10.0, 10, 50, 40]] * 2), np.array([0.9, 0.9]), points,
                          np.array([[0.9, 0.05], [0.9, 0.9]]))
    write_flat_table(tmp_path / "t.csv", table)
    out = tmp_path / "labelled.mp4"
    assert label_video(video_path, read_flat_table(tmp_path / "t.csv"), out, pcutoff=0.1) == 5
    import cv2
    capture = cv2.VideoCapture(str(out))
    drawn = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        drawn.append(frame)
    assert len(drawn) == 5
    red = [(frame[:, :, 2].astype(int) - frame[:, :, 1]) > 100 for frame in drawn]  # the landmarks are red
    assert not red[0].any() and red[1].any() and not red[2].any() and red[3].any()
    assert red[1][:, 30:].sum() < red[3][:, 30:].sum() / 2  # frame 1's point b (confidence 0.05) is not drawn


def a_table_of(frames: int) -> LandmarkTable:
    """The flat table of a video of `frames` frames in which no face was found."""
    return LandmarkTable(["a", "b"], np.arange(frames), np.arange(frames) / 10, np.full(frames, NO_FACE),
                         np.full((frames, 4), np.nan), np.full(frames, np.nan), np.full((frames, 2, 2), np.nan),
                         np.full((frames, 2), np.nan))


class StatedCountCapture:
    """A real cv2.VideoCapture whose container states `stated` frames (0: none)."""

    def __init__(self, capture, stated: int):
        self.capture, self.stated = capture, stated

    def get(self, prop):
        return float(self.stated) if prop == cv2.CAP_PROP_FRAME_COUNT else self.capture.get(prop)

    def __getattr__(self, name):
        return getattr(self.capture, name)


def state_frame_count(monkeypatch, stated: int) -> None:
    real = cv2.VideoCapture
    monkeypatch.setattr(video.cv2, "VideoCapture", lambda path: StatedCountCapture(real(path), stated))


@pytest.mark.parametrize("stated", ["its count", "no count"])
@pytest.mark.parametrize("rows", [40, 80])
def test_the_table_of_another_video_is_refused_before_drawing(tmp_path, monkeypatch, capsys, rows, stated):
    clip = write_video(tmp_path / "clip.avi", [np.full((32, 48, 3), 40, np.uint8)] * 60)
    if stated == "no count":
        state_frame_count(monkeypatch, 0)
    write_flat_table(tmp_path / "t.csv", a_table_of(rows))
    assert label_video_tool.main([str(clip), str(tmp_path / "t.csv")]) == 1
    assert f"t.csv: not the complete table of {clip}: it has rows for {rows} frames (0 to {rows - 1}), the video 60" \
        in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.avi", "t.csv"]


@pytest.mark.parametrize("stated", [0, 90])  # none, or more than the file holds (a truncated file)
def test_its_own_table_is_drawn_whatever_frame_count_the_container_states(tmp_path, monkeypatch, stated):
    clip = write_video(tmp_path / "clip.avi", [np.full((32, 48, 3), 40, np.uint8)] * 60)
    state_frame_count(monkeypatch, stated)
    write_flat_table(tmp_path / "t.csv", a_table_of(60))
    assert label_video_tool.main([str(clip), str(tmp_path / "t.csv")]) == 0
    assert (tmp_path / "t_labelled.mp4").is_file()


def test_a_table_whose_summary_names_another_video_is_refused(tmp_path, capsys):
    clip = write_video(tmp_path / "clip_002.avi", [np.full((32, 48, 3), 40, np.uint8)] * 60)
    write_flat_table(tmp_path / "clip_001_filtered.csv", a_table_of(60))
    (tmp_path / "clip_001_summary.json").write_text(json.dumps({"video": "videos/clip_001.avi", "frames_claimed": 60}))
    assert label_video_tool.main([str(clip), str(tmp_path / "clip_001_filtered.csv")]) == 1
    assert ("it has rows for 60 frames (0 to 59), the video 60, and its clip_001_summary.json names the video "
            "clip_001.avi") in capsys.readouterr().err
    assert not (tmp_path / "clip_001_filtered_labelled.mp4").exists()
