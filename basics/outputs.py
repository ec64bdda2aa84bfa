"""Files written whole or not at all, and output paths checked before any work.

Every output of the project is written aside (a temporary name in the same folder) and moved
into place when complete, so a reader sees the old file or the new one, never half of one.
Before any work every command checks its outputs against its inputs with `check_outputs`: an
output is none of the inputs and no other output, and an existing one is replaced only with
--overwrite.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Callable

from basics.errors import DataError, UsageError


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


def file_above(path: Path) -> Path | None:
    """The first folder on `path`'s way up that exists as a file instead, if any."""
    return next((parent for parent in path.parents if parent.exists() and not parent.is_dir()), None)


def check_output_folder(folder: str | Path, flag: str) -> Path:
    """Create the output folder `flag` names, before any work: UsageError if it is a file, lies
    under a file or cannot be written."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{flag} {folder}: is a file, not a folder")
    if file_above(folder) is not None:
        raise UsageError(f"{flag} {folder}: lies under a file ({file_above(folder)}), not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write_test.{os.getpid()}"
        probe.write_bytes(b"\0" * 1024)
        probe.unlink()
    except OSError as err:
        raise UsageError(f"{flag} {folder}: cannot be written ({err.strerror or err})") from None
    return folder


def check_output_file(path: str | Path, flag: str) -> Path:
    """Make sure the file `flag` names can be written, before any work (its folder is created)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a folder; give a file name")
    if file_above(path) is not None:
        raise UsageError(f"{flag} {path}: lies under a file ({file_above(path)}), not a folder")
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"{flag} {path}: cannot be written (no permission)")
    check_output_folder(path.parent, flag)
    return path


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: the same path once links are followed, or one file under two names."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


Paths = dict[str, "str | Path | None"] | list[tuple[str, "str | Path | None"]]


def named_paths(paths: Paths) -> list[tuple[str, Path]]:
    """(what names it in a message, path) pairs, from a dict or a list of pairs; None paths left out."""
    return [(name, Path(path)) for name, path in (paths.items() if isinstance(paths, dict) else paths)
            if path is not None]


def check_outputs(inputs: Paths, outputs: Paths, overwrite: bool, folders: tuple[str, ...] = ()) -> None:
    """The one rule for what a command writes, applied before any work. `inputs` and `outputs` pair
    what names each path in the messages (a flag, or "an input") with the path; None is left out.
    UsageError if an output is one of the inputs, if two outputs are one file, or, without
    `overwrite`, if an output exists already (for the names in `folders`: holds files)."""
    given_inputs, given_outputs = named_paths(inputs), named_paths(outputs)
    for name, out in given_outputs:
        for source, path in given_inputs:
            if same_file(out, path):
                raise UsageError(f"{name} {out}: is {source}, which this command reads; write it elsewhere")
    claimed: dict[str, str] = {}
    for name, out in given_outputs:
        key = os.path.realpath(out).lower()  # as on a case-insensitive file system
        if key in claimed:
            raise UsageError(f"{name} {out}: is also written as {claimed[key]}; give them different names")
        claimed[key] = name
    if overwrite:
        return
    for name, out in given_outputs:
        if name in folders and out.is_dir() and any(out.iterdir()):
            raise UsageError(f"{name} {out}: holds files; give --overwrite to replace them, or write elsewhere")
        if name not in folders and out.exists():
            raise UsageError(f"{name} {out}: exists; give --overwrite to replace it, or write elsewhere")


def check_writable(folder: Path, needed_bytes: int) -> None:
    """Fail at start-up, not after an epoch, if the run folder cannot take `needed_bytes`."""
    check_output_folder(folder, "--work-dir")
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise DataError(f"{folder}: {free / 2**20:.0f} MB free, the checkpoints need about "
                        f"{needed_bytes / 2**20:.0f} MB; free some space or choose another --work-dir")


def strict_json(value):
    """`value` with every NaN or infinite float replaced by None, so that json.dumps writes strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    return value


def write_json(path: str | Path, value, indent: int | None = None) -> None:
    """Strict JSON (NaN and infinities as null), written atomically."""
    text = json.dumps(strict_json(value), indent=indent, allow_nan=False)
    write_atomically(Path(path), lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))


class Staging:
    """A hidden folder beside one input's outputs where they are written, then moved into place
    together when all are complete (`commit`), the `last` one (the mark of a complete set) last.
    Leaving the `with` block without a commit (an error, Ctrl-C) removes the folder and what is in
    it: nothing partial is left posing as done, and no earlier output is touched; a write that
    fails (OSError: a full disk) becomes a DataError naming the outputs."""

    def __init__(self, out_dir: Path, stem: str):
        self.out_dir, self.stem = Path(out_dir), stem
        self.folder = self.out_dir / f".{stem}.partial-{os.getpid()}"

    def __enter__(self) -> "Staging":
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        return self

    def path(self, name: str) -> Path:
        """Where the output `name` is written until it is committed."""
        return self.folder / name

    def commit(self, last: str) -> list[Path]:
        """Move every output into the output folder (replacing an older one of the same name), `last`
        after the others; returns their final paths."""
        names = sorted(p.name for p in self.folder.iterdir() if p.name != last) + [last]
        moved = []
        for name in names:
            target = self.out_dir / name
            if (self.folder / name).is_dir() and target.is_dir():
                shutil.rmtree(target)
            os.replace(self.folder / name, target)
            moved.append(target)
        return moved

    def __exit__(self, kind, error, trace) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        if isinstance(error, OSError):  # a full disk, a folder taken away: one line, the earlier outputs kept
            raise DataError(f"{self.out_dir / self.stem}: its outputs cannot be written "
                            f"({error.strerror or error}); nothing of them is left") from None
