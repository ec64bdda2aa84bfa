"""The project's one image reader, the file extensions of images and videos it takes, and how inputs are listed.

A FIFO, socket or device file among the inputs is never opened (reading a FIFO waits for a writer):
`special_file_kind` names it, and the listings and the reader refuse it in one line.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from basics.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".3gp", ".ts", ".mts",
                    ".wmv", ".flv")


def special_file_kind(path: str | Path) -> str | None:
    """What `path` is, its symbolic links followed, if it is not a regular file: "a FIFO", "a socket",
    "a device file" or "a folder"; None for a regular file or one that cannot be looked at (its reader says why)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))
    return next((kind for test, kind in kinds if test(mode)), "a device file")


def list_media(inputs: list[str], extensions: tuple[str, ...], kind: str) -> tuple[list[Path], list[str]]:
    """The files of `extensions` among files and folders (a folder's files, not its subfolders),
    and one message per input that does not exist or, a folder, holds none (`kind` names them), and
    per special file (a FIFO, ...), which is left out unopened."""
    files, problems = [], []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = []
            for file in sorted(p for p in path.iterdir() if p.suffix.lower() in extensions):
                special = special_file_kind(file)
                if special not in (None, "a folder"):
                    problems.append(f"{file}: not a regular file ({special})")
                elif file.is_file():
                    found.append(file)
            files += found
            if not found:
                problems.append(f"{path}: no {kind} ({'/'.join(extensions)}) in this folder")
        elif special := special_file_kind(path):
            problems.append(f"{path}: not a regular file ({special})")
        elif path.exists():
            files.append(path)
        else:
            problems.append(f"{path}: no such file or folder")
    return files, problems


HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # PIL's modes of 16-bit, 32-bit and float images


def to_8_bit(image: Image.Image, path: str | Path) -> Image.Image:
    """A 16-bit, 32-bit or float single-channel image as 8-bit grey, scaled by its bit depth
    (PIL's own conversion clips such images to white)."""
    values = np.asarray(image, dtype=np.float64)
    if not np.isfinite(values).all() or values.min() < 0:
        raise DataError(f"{path}: cannot read image (mode {image.mode} with negative or non-finite pixel values)")
    top = 65535.0 if image.mode.startswith("I") and values.max() <= 65535 else max(values.max(), 1.0)
    if image.mode == "F" and values.max() <= 1.0:
        top = 1.0
    return Image.fromarray(np.round(values * (255.0 / top)).astype(np.uint8), mode="L")


def read_image(path: str | Path) -> np.ndarray:
    """An image as an RGB uint8 array, turned upright as its EXIF orientation says (as image viewers
    show it and as the converter measures it); 16-bit images are scaled to 8 bits, not clipped.
    DataError names the file that cannot be read; a special file (a FIFO, ...) is not opened."""
    special = special_file_kind(path)
    if special:
        raise DataError(f"{path}: cannot read image ({special}, not a regular file)")
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode in HIGH_DEPTH_MODES:
                image = to_8_bit(image, path)
            return np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"{path}: cannot read image (no such file)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:  # PIL's "not an image"
        raise DataError(f"{path}: cannot read image ({type(err).__name__})") from None
