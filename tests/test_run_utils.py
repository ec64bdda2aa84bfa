import json
import os

import pytest
import torch

import outputs
from errors import UsageError
from run_utils import MetricsLog, pick_device
from outputs import check_output_file, check_output_folder, strict_json, write_json


def test_a_torn_last_line_is_skipped_and_trimmed_away(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for epoch in (1, 2, 3):
        log.append({"epoch": epoch, "val_nme_iod": 10.0 / epoch})
    with open(log.path, "a") as f:
        f.write('{"epoch": 4, "val_nm')  # killed during the append
    assert [r["epoch"] for r in log.read()] == [1, 2, 3]
    log.trim(2)
    assert [json.loads(line)["epoch"] for line in log.path.read_text().splitlines()] == [1, 2]


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


@pytest.mark.parametrize("name, message", [("gpu", "not a device name"), ("cuda", "no CUDA GPU"),
                                           ("cuda:7", "no CUDA GPU"), ("cpu:x", "not a device name")])
def test_a_device_that_is_not_there_is_one_line(monkeypatch, name, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError, match=message):
        pick_device(name)
    assert pick_device("cpu") == torch.device("cpu")


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
