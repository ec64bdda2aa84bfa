"""Convert DogFLW (per-image JSON labels) into COCO keypoint files, one per split.

What is read, checked and repaired: basics/dogflw.py's docstring, and docs/USAGE.md's converter section.

    python tools/convert_dogflw_to_coco.py --download
    python tools/convert_dogflw_to_coco.py --dogflw-root DIR --out-dir data/dogflw/annotations
    python tools/convert_dogflw_to_coco.py --dogflw-root DIR --meta meta.json --out-dir OUT
    python tools/convert_dogflw_to_coco.py --coco cvat_export.json --images frames/images --out-dir MY_ANN \\
        --split train          # corrected frames back from CVAT (COCO Keypoints 1.0)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import _repo  # the repository on sys.path: tools/_repo.py
from basics.cli import CommandLineParser
from basics.coco_files import DOGFLW_META, read_meta_file
from basics.dogflw import convert, convert_coco_export, download_dogflw, find_splits
from basics.errors import reports_errors
from basics.outputs import check_output_folder, check_outputs


def build_parser() -> CommandLineParser:
    parser = CommandLineParser(description=__doc__)
    source = parser.add_argument_group("what to convert (one of)")
    source.add_argument("--dogflw-root", "--dogflw_root", dest="dogflw_root",
                        help="folder holding DogFLW's split folders (train/, test/), or another dataset in its layout")
    source.add_argument("--download", action="store_true", help="download DogFLW with kagglehub first")
    source.add_argument("--coco", help="a COCO keypoints file another tool wrote (CVAT's \"COCO Keypoints 1.0\" "
                        "export of corrected frames, tools/extract_frames.py): checked and written as --split")
    parser.add_argument("--images", help="with --coco, the folder its file names are relative to (default: the "
                        "file's folder)")
    parser.add_argument("--split", default="train", help="with --coco, the name of the file written (SPLIT.json)")
    parser.add_argument("--out-dir", "--out_dir", dest="out_dir", default="data/dogflw/annotations",
                        help="where <split>.json go")
    parser.add_argument("--meta", help="keypoint metadata JSON for another dataset (default: DogFLW's)")
    parser.add_argument("--strict", action="store_true", help="stop with an error on any bad file")
    parser.add_argument("--overwrite", action="store_true", help="replace <split>.json files that exist in --out-dir")
    return parser


def check_split_files(args: argparse.Namespace, root: Path | None) -> None:
    """The files this conversion writes (one per split) checked against its inputs and existing files."""
    splits = [args.split] if root is None else [split.name for split in find_splits(root)] if root.is_dir() else []
    outputs = {f"--out-dir's {split}.json": Path(args.out_dir) / f"{split}.json" for split in splits}
    check_outputs({"--coco": args.coco, "--meta": args.meta}, outputs, args.overwrite)


@reports_errors
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if sum(bool(v) for v in (args.download, args.dogflw_root, args.coco)) != 1:
        parser.error("give one of --dogflw-root DIR, --download and --coco FILE")
    if not args.split or any(c in args.split for c in "/\\") or args.split.startswith("."):
        parser.error(f"--split {args.split!r}: a plain file name (train, val, test)")
    meta = read_meta_file(args.meta) if args.meta else DOGFLW_META
    check_output_folder(args.out_dir, "--out-dir")
    if args.coco:
        check_split_files(args, None)
        images = Path(args.images) if args.images else Path(args.coco).parent
        convert_coco_export(args.coco, images, args.out_dir, meta, args.split, strict=args.strict)
        return 0
    root = download_dogflw() if args.download else Path(args.dogflw_root)
    check_split_files(args, root)
    convert(root, args.out_dir, meta, strict=args.strict)
    return 0


if __name__ == "__main__":
    sys.exit(main())
