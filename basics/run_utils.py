"""Run utilities shared by the trainers and the scripts: device and process set-up, stop
requests, files written whole or not at all, and the per-epoch metrics log.

Under torchrun (DistributedDataParallel) every process runs the same code; `setup_distributed`
says which process this is, and only rank 0 writes files.
"""
from __future__ import annotations

import argparse
import fcntl
import itertools
import json
import os
import random
import signal
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from basics.errors import UsageError
from basics.outputs import file_above, strict_json, write_atomically


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global random streams."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    """The torch device --device names: 'auto' picks cuda, then mps, then cpu. A device that is not
    there, or a name that is no device, is refused in one line."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {name}: not a device name (auto, cpu, cuda, cuda:N or mps)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA GPU is available here; use --device cpu (or auto)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: there are {torch.cuda.device_count()} CUDA GPU(s), numbered from 0")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name}: Apple's MPS is not available here; use --device cpu (or auto)")
    return device


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


def broadcast_from_rank0(value):
    """Rank 0's `value` on every DDP rank (the value itself in a single process)."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


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

    def __init__(self, action: str = "saving last.pth after this step"):
        self.signal_name: str | None = None
        self.action = action  # what the program does on a request, for the message
        self.previous = {}

    def __enter__(self) -> "StopRequest":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self.request)
        return self

    def request(self, signum: int, frame) -> None:
        if self.signal_name:
            raise KeyboardInterrupt  # a second Ctrl-C quits at once
        self.signal_name = signal.Signals(signum).name
        print(f"\n{self.signal_name}: {self.action} (again to quit at once)", file=sys.stderr)

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def given_flags(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The destinations of the flags `argv` sets, as opposed to those left at their defaults."""
    unset = object()
    dests = vars(parser.parse_args(argv))
    probe = parser.parse_args(argv, argparse.Namespace(**{dest: unset for dest in dests}))
    return {dest for dest, value in vars(probe).items() if value is not unset}


def resumed_settings(parser: argparse.ArgumentParser, argv: list[str] | None, args: argparse.Namespace,
                     saved: dict, may_change: tuple[str, ...]) -> argparse.Namespace:
    """The settings of the run being resumed (`saved`, its checkpoint's args), with the flags in
    `may_change` taken from the command line; any other flag given that contradicts the run is
    refused in one line."""
    given = given_flags(parser, argv)
    defaults = vars(parser.parse_args([]))
    for dest in sorted(given - set(may_change)):
        if getattr(args, dest) != saved.get(dest, defaults[dest]):
            flag = "--" + dest.replace("_", "-")
            run_value = saved.get(dest, defaults[dest])
            raise UsageError(f"{flag} {getattr(args, dest)}: the run being resumed has {run_value}; "
                             f"--resume continues a run with its own settings (leave {flag} out, or start a new "
                             "run in another --work-dir)")
    settings = {**defaults, **{k: v for k, v in saved.items() if k in defaults}}
    settings.update({dest: getattr(args, dest) for dest in given & set(may_change)})
    settings["work_dir"] = args.work_dir or str(Path(args.resume).parent)
    return argparse.Namespace(**settings)


def holds_a_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in ("last.pth", "best.pth", "metrics.jsonl"))


CLAIMED_RUN_FOLDERS: dict[str, object] = {}  # this process's run folders -> their lock files, open until it ends


def run_lock(folder: Path) -> Path:
    """A run folder's lock file: beside it (`.NAME.run.lock`), so that the folder holds the run's
    files alone and is not created before the run is set up."""
    folder = Path(os.path.realpath(folder))
    return folder.parent / f".{folder.name}.run.lock"


def claim_run_folder(folder: Path, fresh: bool) -> bool:
    """Take `folder` for this process: an exclusive flock on its lock file, which the kernel lets go
    when the process ends (so a folder restored on another machine is free). False if another live
    process holds it or, with `fresh`, if it holds a run already; checked after the lock is taken,
    so two runs started together cannot both pass."""
    lock = run_lock(folder)
    key = str(lock)
    newly_taken = key not in CLAIMED_RUN_FOLDERS
    if newly_taken:
        if file_above(Path(folder)) is not None:
            raise UsageError(f"--work-dir {folder}: lies under a file ({file_above(Path(folder))}), not a folder")
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            handle = open(lock, "a")
        except OSError as err:
            raise UsageError(f"--work-dir {folder}: cannot be created ({err.strerror or err})") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        CLAIMED_RUN_FOLDERS[key] = handle
    if fresh and holds_a_run(folder):
        if newly_taken:  # left free for the run it holds
            CLAIMED_RUN_FOLDERS.pop(key).close()
        return False
    return True


def choose_work_dir(work_dir: str | None, default: str, resuming: bool) -> str:
    """The run folder, claimed for this process (`claim_run_folder`): --work-dir (refused if another
    live run uses it, or if it holds another run unless resuming it), else `default`, or the first of
    default-2, -3, ... that is free and holds no run: never overwrite one."""
    if work_dir is not None:
        if claim_run_folder(Path(work_dir), fresh=not resuming):
            return work_dir
        if holds_a_run(Path(work_dir)) and not resuming:
            raise UsageError(f"--work-dir {work_dir}: holds a run already; continue it with --resume "
                             f"{Path(work_dir) / 'last.pth'}, or choose another folder")
        raise UsageError(f"--work-dir {work_dir}: another run is training in it now; wait for it to end, or "
                         "choose another folder")
    base = folder = Path(default)
    for n in itertools.count(2):
        if claim_run_folder(folder, fresh=True):
            break
        folder = base.with_name(f"{base.name}-{n}")
    if folder != base:
        print(f"{base} holds an earlier run; this one goes to {folder}")
    return str(folder)


class MetricsLog:
    """A run's metrics.jsonl: one strict-JSON object per finished epoch, appended as it finishes.

    A kill during an append can leave a torn last line; reading skips it, and a resume rewrites
    the file from the records it keeps. After a resume the epochs redone replace the lines a
    crash left behind."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def append(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(strict_json(record), allow_nan=False) + "\n")

    def read(self) -> list[dict]:
        """The records in epoch order, the last line of an epoch winning; lines that are not a
        whole record (a torn append) are skipped."""
        records = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    record = json.loads(line)
                    records[int(record["epoch"])] = record
                except (ValueError, KeyError, TypeError):
                    continue
        return [records[epoch] for epoch in sorted(records)]

    def trim(self, last_epoch: int) -> None:
        """Keep only whole records of epochs up to `last_epoch` (later ones were written before a
        crash and are redone after resuming), rewriting the file atomically."""
        if self.path.exists():
            self.rewrite([r for r in self.read() if r["epoch"] <= last_epoch])

    def rewrite(self, records: list[dict]) -> None:
        """The file holding exactly `records`, written atomically."""
        text = "".join(json.dumps(strict_json(r), allow_nan=False) + "\n" for r in records)
        write_atomically(self.path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
