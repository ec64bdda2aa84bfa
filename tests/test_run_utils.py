"""Run utilities: the per-epoch log survives a torn line; a device that is not there is one line."""

import json

import pytest
import torch

from basics.errors import UsageError
from basics.run_utils import MetricsLog, pick_device


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


