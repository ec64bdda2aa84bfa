"""Landmarks in photos, beside video.py's videos: `analyze_photos` passes photos through the face
landmarker a batch at a time and writes each photo's outputs into an `outputs.Staging` folder,
moved into place when complete: NAME.json (its faces: box, where the box came from, score,
landmarks in image pixels and a confidence per landmark; the mark of a complete set),
NAME_overlay.png (the faces drawn) and, with region crops, NAME_regions/. tools/predict.py lists
the photos and calls it.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from basics.errors import DataError, Interrupted
from basics.images import read_image
from basics.outputs import Staging, write_json
from basics.run_utils import StopRequest
from basics.visualize import draw_faces
from inference import Face, FaceLandmarker, save_region_crops


@dataclass
class PhotoOptions:
    """How to analyse photos: the run NAME.json records (the landmark `checkpoint`, the `detector`,
    None for none, and whether the flip test is on), `batch_size` photos per pass, region crops of
    side `regions_size` (0: none), and the face boxes given: `bbox` for every photo, else
    `box_table`'s by path or file name (read from `boxes_file`)."""
    checkpoint: str
    detector: str | None = None
    flip_test: bool = False
    batch_size: int = 16
    regions_size: int = 0
    bbox: np.ndarray | None = None
    box_table: dict[str, np.ndarray] = field(default_factory=dict)
    boxes_file: str | None = None
    produced_by: dict = field(default_factory=dict)  # recorded in NAME.json (tools/predict.py)


def given_box(path: Path, options: PhotoOptions) -> tuple[np.ndarray | None, str]:
    """The face box given for a photo by --bbox or --boxes, if any, and where its faces come from."""
    if options.bbox is not None:
        return options.bbox, "--bbox"
    for key in (str(path), path.name):
        if key in options.box_table:
            return options.box_table[key], "--boxes"
    if options.boxes_file:
        tqdm.write(f"warning: {path}: not in {options.boxes_file}; "
                   f"{'the detector finds its faces' if options.detector else 'the whole image is its face box'}",
                   file=sys.stderr)
    return None, "detector" if options.detector else "whole image"


def write_photo_outputs(staging: Staging, path: Path, stem: str, image: np.ndarray, faces: list[Face], source: str,
                        landmarker: FaceLandmarker, options: PhotoOptions) -> None:
    """STEM.json, STEM_overlay.png and, with region crops, STEM_regions/ into the staging folder."""
    result = {"image": str(path), "width": image.shape[1], "height": image.shape[0],
              "faces": [{"box": face.box.round(3).tolist(), "box_source": source, "score": round(face.score, 4),
                         "landmarks": face.landmarks.round(3).tolist(),
                         "confidence": face.confidence.astype(float).round(4).tolist()} for face in faces],
              "keypoint_names": landmarker.predictor.meta["keypoints"], "checkpoint": str(options.checkpoint),
              "detector": options.detector, "flip_test": options.flip_test, "produced_by": options.produced_by}
    write_json(staging.path(f"{stem}.json"), result)
    if not cv2.imwrite(str(staging.path(f"{stem}_overlay.png")), cv2.cvtColor(draw_faces(image, faces),
                                                                              cv2.COLOR_RGB2BGR)):
        raise DataError(f"{staging.out_dir / stem}_overlay.png: cannot be written")
    if options.regions_size:
        save_region_crops(image, faces, landmarker.predictor.meta, staging.path(f"{stem}_regions"), "",
                          options.regions_size)


def analyze_photos(jobs: list[tuple[Path, str]], landmarker: FaceLandmarker, out_dir: Path, options: PhotoOptions,
                   problems: list[str], stop: StopRequest, done: list[Path]) -> None:
    """Faces and landmarks of every (photo, output stem), a batch at a time; a photo that cannot be
    read is warned of and added to `problems`, and each photo done is added to `done` as its
    outputs land (so that an interruption knows them)."""
    with tqdm(total=len(jobs), desc="photos", unit="img", dynamic_ncols=True) as progress:
        for start in range(0, len(jobs), options.batch_size):
            if stop.signal_name is not None:
                raise Interrupted(f"{stop.signal_name} while predicting photos")
            chunk, read = jobs[start:start + options.batch_size], []
            for path, stem in chunk:
                try:
                    read.append((path, stem, read_image(path)))
                except DataError as err:
                    tqdm.write(f"warning: {err}; skipped", file=sys.stderr)
                    problems.append(str(err))
            given = [given_box(path, options) for path, _, _ in read]
            boxes = [None if box is None else box[None] for box, _ in given]
            for (path, stem, image), faces, (_, source) in zip(read, landmarker.faces([r[2] for r in read], boxes),
                                                              given):
                with Staging(out_dir, stem) as staging:
                    write_photo_outputs(staging, path, stem, image, faces, source, landmarker, options)
                    staging.commit(last=f"{stem}.json")
                done.append(path)
            progress.update(len(chunk))
