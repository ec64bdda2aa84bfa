"""Outputs: strict JSON written whole or not at all, paths checked before the work, staged sets."""

import json
import os

import pytest

from basics import outputs
from basics.errors import UsageError
from basics.outputs import Staging, check_output_file, check_output_folder, check_outputs, strict_json, write_json
from basics.run_utils import MetricsLog


def test_json_written_is_strict(tmp_path):
    write_json(tmp_path / "m.json", {"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -float("inf")}})
    text = (tmp_path / "m.json").read_text()
    assert json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in JSON")) == {
        "a": None, "b": [1.0, None], "c": {"d": None}}
    assert strict_json((1, 2.5)) == [1, 2.5]


def test_files_are_written_with_the_users_normal_mode(tmp_path):
    previous = os.umask(0o022)
    try:
        write_json(tmp_path / "m.json", {"a": 1})
        MetricsLog(tmp_path / "metrics.jsonl").append({"epoch": 1})
        MetricsLog(tmp_path / "metrics.jsonl").trim(1)
    finally:
        os.umask(previous)
    assert {oct(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()} == {"0o644"}


def test_output_paths_are_checked_before_the_work(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(UsageError, match="is a file, not a folder"):
        check_output_folder(a_file, "--out")
    with pytest.raises(UsageError, match="lies under a file"):
        check_output_folder(a_file / "sub", "--out")
    with pytest.raises(UsageError, match="is a folder; give a file name"):
        check_output_file(tmp_path, "--out")
    with pytest.raises(UsageError, match="lies under a file"):
        check_output_file(a_file / "m.json", "--out")
    assert check_output_file(tmp_path / "new" / "m.json", "--out") == tmp_path / "new" / "m.json"
    assert (tmp_path / "new").is_dir() and list((tmp_path / "new").iterdir()) == []
    assert outputs.check_output_folder(tmp_path / "x" / "y", "--out").is_dir()


def test_a_staged_set_appears_whole_and_an_abandoned_one_leaves_nothing(tmp_path):
    (tmp_path / "clip.csv").write_text("old")
    with Staging(tmp_path, "clip") as staging:
        staging.path("clip.csv").write_text("new")
        (staging.path("clip_regions")).mkdir()
        staging.path("clip_summary.json").write_text("{}")
        assert (tmp_path / "clip.csv").read_text() == "old"  # nothing moves before the commit
        moved = staging.commit(last="clip_summary.json")
    assert [p.name for p in moved] == ["clip.csv", "clip_regions", "clip_summary.json"]  # the mark of a whole set last
    assert (tmp_path / "clip.csv").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == [
        "clip.csv", "clip_regions", "clip_summary.json"]
    with pytest.raises(KeyboardInterrupt):
        with Staging(tmp_path, "other") as staging:
            staging.path("other.csv").write_text("half")
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.csv", "clip_regions", "clip_summary.json"]


def test_an_output_that_is_an_input_is_refused_under_any_name(tmp_path):
    data = tmp_path / "val.json"
    data.write_text("{}")
    (tmp_path / "link.json").symlink_to(data)
    os.link(data, tmp_path / "hard.json")
    for out in (data, tmp_path / "link.json", tmp_path / "hard.json", tmp_path / "sub" / ".." / "val.json"):
        with pytest.raises(UsageError, match=f"--out {out}: is --ann, which this command reads"):
            check_outputs({"--ann": data, "--meta": None}, {"--out": out}, overwrite=True)
    check_outputs({"--ann": data}, {"--out": tmp_path / "m.json", "--vis-dir": None}, overwrite=False)


def test_two_outputs_on_one_file_are_refused_naming_both(tmp_path):
    with pytest.raises(UsageError, match="clip_dlc.mp4's output .*: is also written as clip.mp4's output; give"):
        check_outputs({}, [("clip.mp4's output", tmp_path / "clip_dlc.csv"),
                           ("clip_dlc.mp4's output", tmp_path / "CLIP_dlc.csv")], overwrite=True)


def test_an_existing_output_is_replaced_only_with_overwrite(tmp_path):
    done, pictures = tmp_path / "m.json", tmp_path / "vis"
    done.write_text("kept")
    pictures.mkdir()
    check_outputs({}, {"--vis-dir": pictures}, overwrite=False, folders=("--vis-dir",))  # empty: free
    (pictures / "a.png").write_bytes(b"")
    with pytest.raises(UsageError, match="--out .*m.json: exists; give --overwrite to replace it"):
        check_outputs({}, {"--out": done}, overwrite=False)
    with pytest.raises(UsageError, match="--vis-dir .*vis: holds files; give --overwrite to replace them"):
        check_outputs({}, {"--vis-dir": pictures}, overwrite=False, folders=("--vis-dir",))
    check_outputs({}, {"--out": done, "--vis-dir": pictures}, overwrite=True, folders=("--vis-dir",))
