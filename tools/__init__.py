"""The command lines (run as `python tools/NAME.py`); see _repo.py for how they find the packages."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
