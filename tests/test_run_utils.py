"""Run utilities: the per-epoch log survives a torn line; a device that is not there is one line; a run
folder belongs to one live process."""

import json
import subprocess
import sys

import pytest
import torch

from basics.errors import UsageError
from basics.run_utils import MetricsLog, choose_work_dir, pick_device, run_lock


def test_a_torn_last_line_is_skipped_and_trimmed_away(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for epoch in (1, 2, 3):
        log.append({"epoch": epoch, "val_nme_iod": 10.0 / epoch})
    with open(log.path, "a") as f:
        f.write('{"epoch": 4, "val_nm')  # killed during the append
    assert [r["epoch"] for r in log.read()] == [1, 2, 3]
    log.trim(2)
    assert [json.loads(line)["epoch"] for line in log.path.read_text().splitlines()] == [1, 2]


@pytest.mark.parametrize("name, message", [("gpu", "not a device name"), ("cuda", "no CUDA GPU"),
                                           ("cuda:7", "no CUDA GPU"), ("cpu:x", "not a device name")])
def test_a_device_that_is_not_there_is_one_line(monkeypatch, name, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError, match=message):
        pick_device(name)
    assert pick_device("cpu") == torch.device("cpu")




HOLD_THE_LOCK = """
import fcntl, sys, time
handle = open(sys.argv[1], "a")
fcntl.flock(handle, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(60)
"""


def test_a_run_folder_a_live_process_trains_in_is_refused_and_free_once_it_ends(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    other = subprocess.Popen([sys.executable, "-c", HOLD_THE_LOCK, str(run_lock(run))], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        for resuming in (False, True):
            with pytest.raises(UsageError, match=f"--work-dir {run}: another run is training in it now"):
                choose_work_dir(str(run), "unused", resuming=resuming)
        assert list(run.iterdir()) == []  # nothing of this process written there
    finally:
        other.kill()
        other.wait()
    assert choose_work_dir(str(run), "unused", resuming=False) == str(run)


def test_the_default_folder_skips_one_a_live_process_holds(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "work_dirs" / "r").mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", HOLD_THE_LOCK, str(run_lock(tmp_path / "work_dirs" / "r"))],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        assert choose_work_dir(None, "work_dirs/r", resuming=False) == "work_dirs/r-2"
    finally:
        other.kill()
        other.wait()
