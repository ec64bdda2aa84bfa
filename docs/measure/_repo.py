"""Puts the repository on sys.path, so that `python docs/measure/NAME.py` finds the project's packages
(as tools/_repo.py does for the commands): each script's first project import is `import _repo`."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
