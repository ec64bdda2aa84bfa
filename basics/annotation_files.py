"""Which annotation files a trainer uses: train, validation (held out of train when there is none)
and test, converting DogFLW first when the folder is empty."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from basics.coco_files import DOGFLW_META, held_out_ids, read_meta_file, split_coco
from basics.dogflw import convert, download_dogflw
from basics.errors import DataError
from basics.outputs import write_json

DEFAULT_ANN_ROOT = Path("data/dogflw/annotations")  # where train_simple.py converts DogFLW by default


@dataclass
class AnnotationFiles:
    """The annotation files of a run: it trains on `train`, chooses best.pth on `val` and scores
    `test` once at the end (None where there is no test file, or where `val` is the test file)."""
    train: Path
    val: Path
    test: Path | None


def hold_out_validation(train: Path, fraction: float) -> tuple[Path, Path]:
    """Train minus a held-out validation share, and that share: a seeded, breed-stratified
    `fraction` of train.json (coco_files.held_out_ids), written once beside it in holdout_F/ and
    reused while train.json is unchanged."""
    data = train.read_bytes()
    digest = hashlib.sha1(data).hexdigest()
    folder = train.parent / f"holdout_{fraction:g}"
    rest, held = folder / "train.json", folder / "val.json"
    try:
        made_from = json.loads(held.read_text(encoding="utf-8"))["info"].get("held_out_from")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        made_from = None
    if made_from != digest or not rest.exists():
        coco = json.loads(data.decode("utf-8"))
        ids = held_out_ids(coco["images"], fraction)
        if not ids or len(ids) == len(coco["images"]):
            raise DataError(f"{train}: {len(coco['images'])} images cannot give a validation share of {fraction:g}")
        info = {**(coco.get("info") or {}), "held_out_from": digest, "held_out_fraction": fraction}
        folder.mkdir(exist_ok=True)
        for path, part in zip((rest, held), split_coco(coco, ids)):
            write_json(path, {**part, "info": info})
        print(f"held out {len(ids)} of {len(coco['images'])} training images (breed-stratified) for validation: {held}")
    return rest, held


def prepare_annotations(ann_root: str | Path, data_root: str | None, val_fraction: float = 0.0,
                        meta_file: str | None = None) -> AnnotationFiles:
    """The annotation files a trainer needs, converting DogFLW first where there are none (from
    --data-root, or downloaded when --ann-root is the default). With val.json, validation is on
    it and test.json (if any) is the test; with test.json alone, `val_fraction` of train is held
    out for validation (0: validate on test.json, as papers that select on the test set do).
    `meta_file`: the keypoint metadata of a dataset other than DogFLW, for the conversion."""
    ann_root = Path(ann_root)
    if not (ann_root / "train.json").exists():
        if data_root is None and ann_root != DEFAULT_ANN_ROOT:
            state = "has no train.json" if ann_root.is_dir() else "no such folder"
            raise DataError(f"--ann-root {ann_root}: {state}; give the folder tools/convert_dogflw_to_coco.py wrote, "
                            "or --data-root DIR (a copy of DogFLW) to convert it there")
        print(f"{ann_root / 'train.json'} not found: converting DogFLW "
              f"{'from ' + data_root if data_root else '(downloading it first)'}")
        convert(Path(data_root) if data_root else download_dogflw(), ann_root,
                read_meta_file(meta_file) if meta_file else DOGFLW_META)
    train, val, test = (ann_root / f"{name}.json" for name in ("train", "val", "test"))
    if val.exists():
        return AnnotationFiles(train, val, test if test.exists() else None)
    if not test.exists():
        raise DataError(f"{ann_root}: has train.json but neither val.json nor test.json to validate on")
    if val_fraction == 0:
        return AnnotationFiles(train, test, None)
    return AnnotationFiles(*hold_out_validation(train, val_fraction), test)
