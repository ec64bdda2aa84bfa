"""The project's one error hierarchy, and how every command-line script reports mistakes.

Anything a user can cause or fix (a wrong path, a file of the wrong kind, an unknown backbone,
a full disk) raises a `UserFacingError` whose message names the thing and the problem. The
scripts' `main` functions are wrapped in `reports_errors`, which prints that message as one
line and returns a non-zero exit status; any other exception is a bug and keeps its traceback.
Command lines are parsed by `CommandLineParser`, whose argument types (positive_int, fraction,
...) refuse a value out of range in one line before any work starts.
"""
from __future__ import annotations

import functools
import signal
import sys
import threading
from typing import Callable


class UserFacingError(Exception):
    """A problem the user can act on; the message names the file or flag and what is wrong."""

    exit_status = 1


class UsageError(UserFacingError):
    """A flag, setting or name that cannot be used (an unknown backbone, a value out of range)."""


class DataError(UserFacingError):
    """An annotation file, image folder or keypoint metadata that cannot be used."""


class CheckpointError(UserFacingError):
    """A checkpoint file that cannot be used for what it was given for."""


class WeightsUnavailable(UserFacingError):
    """Pretrained weights could not be obtained; the message says how to continue."""


class TrainingStopped(UserFacingError):
    """A run stopped on purpose (non-finite loss, unreadable data, a checkpoint it cannot write)."""


class RunFinished(UserFacingError):
    """A restarted run (--resume auto) that had finished already: said in one line, exit status 0."""

    exit_status = 0


class Interrupted(TrainingStopped):
    """SIGINT or SIGTERM arrived and the run stopped cleanly."""

    exit_status = 130


class Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler's stop), raised where it arrives so that it unwinds as Ctrl-C does:
    temporary files removed, outputs finished before it kept."""


def raise_terminated(signum, frame) -> None:
    raise Terminated


def reports_errors(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a script's main(argv) -> exit status: a UserFacingError becomes "error: MESSAGE" (or
    "interrupted by MESSAGE") on stderr and its exit status; Ctrl-C or SIGTERM outside a training
    loop unwinds (temporary files go) and becomes one line and 130."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, raise_terminated) if in_main_thread else None
        try:
            return main(*args, **kwargs)
        except Interrupted as err:
            print(f"interrupted by {err}", file=sys.stderr)
            return err.exit_status
        except RunFinished as done:
            print(done)
            return done.exit_status
        except UserFacingError as err:
            print(f"error: {err}", file=sys.stderr)
            return err.exit_status
        except KeyboardInterrupt as stop:
            print(f"interrupted by {'SIGTERM' if isinstance(stop, Terminated) else 'Ctrl-C'}", file=sys.stderr)
            return 130
        finally:
            if in_main_thread:
                signal.signal(signal.SIGTERM, previous)
    return wrapper
