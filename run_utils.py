"""Run utilities shared by the trainers and the scripts: device and process set-up, stop
requests, files written whole or not at all, and the per-epoch metrics log.

Under torchrun (DistributedDataParallel) every process runs the same code; `setup_distributed`
says which process this is, and only rank 0 writes files.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from errors import DataError


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global random streams."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    """'auto' picks cuda, then mps, then cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def setup_distributed(device_name: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device): from torchrun's environment (NCCL on GPUs, gloo on CPU), else (0, 1, device)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1, pick_device(device_name)
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available() and device_name in ("auto", "cuda"):
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    dist.init_process_group(backend)
    return dist.get_rank(), world_size, device


def sum_across_ranks(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over all DDP ranks (the values themselves in a single process)."""
    if not dist.is_initialized():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every DDP rank rank 0's buffers (BatchNorm statistics: each rank's batches moved its own)."""
    if dist.is_initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def ignore_ctrl_c(worker_id: int) -> None:
    """Ctrl-C reaches every process of the terminal's group: DataLoader workers leave it to the
    main process, which stops cleanly. (SIGTERM keeps its default: it is how workers are ended.)"""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class StopRequest:
    """Turns SIGINT (Ctrl-C) and SIGTERM (spot or job preemption) into a flag checked between steps,
    so a run can save a checkpoint at a clean point instead of dying mid-update."""

    def __init__(self):
        self.signal_name: str | None = None
        self.previous = {}

    def __enter__(self) -> "StopRequest":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self.request)
        return self

    def request(self, signum: int, frame) -> None:
        if self.signal_name:
            raise KeyboardInterrupt  # a second Ctrl-C quits at once
        self.signal_name = signal.Signals(signum).name
        print(f"\n{self.signal_name}: saving last.pth after this step (again to quit at once)", file=sys.stderr)

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(temporary path) beside `path`, then rename it into place: readers see the old
    file or the new one, never half of one. The temporary file is removed if writing fails."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_writable(folder: Path, needed_bytes: int) -> None:
    """Fail at start-up, not after an epoch, if `folder` cannot take `needed_bytes` of output."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write_test"
        probe.write_bytes(b"\0" * 1024)
        probe.unlink()
        free = shutil.disk_usage(folder).free
    except OSError as err:
        raise DataError(f"{folder}: cannot write to the run folder ({err.strerror or err})") from None
    if free < needed_bytes:
        raise DataError(f"{folder}: {free / 2**20:.0f} MB free, the checkpoints need about "
                        f"{needed_bytes / 2**20:.0f} MB; free some space or choose another --work-dir")


class MetricsLog:
    """A run's metrics.jsonl: one JSON object per finished epoch, appended as it finishes. After a
    resume the epochs redone replace the lines a crash left behind."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def append(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        """The records in epoch order, the last line of an epoch winning."""
        records = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    record = json.loads(line)
                    records[record["epoch"]] = record
        return [records[epoch] for epoch in sorted(records)]

    def trim(self, last_epoch: int) -> None:
        """Drop the lines of epochs after `last_epoch` (written before a crash, redone after resuming)."""
        if self.path.exists():
            kept = [record for record in self.read() if record["epoch"] <= last_epoch]
            self.path.write_text("".join(json.dumps(record) + "\n" for record in kept), encoding="utf-8")
