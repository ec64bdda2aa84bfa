"""Puts the repository on sys.path, so that `python tools/NAME.py` finds the project's packages.

Each script's first project import is `import _repo`; imported as the package `tools` (the
tests do), tools/__init__.py puts this folder on sys.path so that the same line resolves."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
