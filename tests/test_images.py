"""The one image reader: upright as displayed, 8-bit RGB from any depth, one line for what it cannot read."""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from basics.errors import DataError
from basics.images import IMAGE_EXTENSIONS, list_media, read_image
from conftest import REPO


def test_the_one_image_reader_turns_an_exif_rotated_jpeg_upright(tmp_path):
    upright = np.zeros((60, 40, 3), dtype=np.uint8)  # 40 wide, 60 tall as displayed
    upright[:10, :, 0] = 255  # a red band along the top
    stored = np.rot90(upright, k=1)  # stored turned a quarter left; EXIF orientation 6 turns it back
    exif = Image.Image.getexif(Image.new("RGB", (1, 1)))
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(stored)).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    image = read_image(tmp_path / "rotated.jpg")
    assert image.shape == (60, 40, 3) and image[:8, :, 0].mean() > 200 and image[20:, :, 0].mean() < 40
    with pytest.raises(DataError, match="cannot read image"):
        read_image(tmp_path / "missing.png")


@pytest.mark.parametrize("depth", ["16-bit grey", "16-bit colour"])
def test_a_16_bit_png_is_scaled_to_8_bits_not_read_as_white(tmp_path, depth):
    ramp = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), ramp if depth == "16-bit grey" else np.stack([ramp] * 3, axis=-1))
    image = read_image(tmp_path / "deep.png")
    assert image.dtype == np.uint8 and image.shape == (48, 64, 3)
    np.testing.assert_allclose(image[..., 0].astype(float), ramp / 257.0, atol=1.0)  # 0 .. 255 as the ramp goes


def test_a_fifo_among_inputs_is_named_and_never_opened(tmp_path):
    """A FIFO opened for reading waits for a writer: listing and reading must not open it."""
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    os.mkfifo(folder / "b.png")
    (folder / "c.png").symlink_to(folder / "a.png")  # a link is followed, as a file
    files, problems = list_media([str(folder), str(folder / "b.png")], IMAGE_EXTENSIONS, "image")
    assert files == [folder / "a.png", folder / "c.png"]
    assert problems == [f"{folder / 'b.png'}: not a regular file (a FIFO)"] * 2
    code = f"from basics.images import read_image\nread_image({str(folder / 'b.png')!r})"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "b.png: cannot read image (a FIFO, not a regular file)" in result.stderr
