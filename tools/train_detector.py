"""Train the face detector on the face boxes of the landmark COCO files (one class: face).

    python tools/train_detector.py --ann-root data/dogflw/annotations            # DogFLW's boxes
    python tools/train_detector.py --ann-root MY_FRAMES --init-from work_dirs/detector/best.pth --epochs 6
    python tools/train_detector.py --resume work_dirs/detector/last.pth

The trainer itself is detector/train.py; `--help` lists every flag.
"""
import sys

import _repo  # the repository on sys.path: tools/_repo.py
from detector.train import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
