"""Draw a landmark table on its video: boxes, face ids and landmarks, frame by frame.

    python tools/label_video.py clip.mp4 predictions/clip_filtered.csv            # -> predictions/clip_filtered_labelled.mp4
    python tools/label_video.py clip.mp4 predictions/clip.csv --pcutoff 0.5 --out raw.mp4

TABLE is a flat table that tools/predict.py wrote for VIDEO (NAME.csv, raw, or NAME_filtered.csv);
row k is drawn on frame k of the file. Landmarks whose confidence is below --pcutoff are not
drawn (DeepLabCut's pcutoff; points filled in by filtering have confidence 0). The video is
written aside and moved into place when complete; an existing one is replaced only with
--overwrite.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import _repo  # the repository on sys.path: tools/_repo.py
from analysis.tables import read_flat_table
from analysis.video import label_video
from basics.cli import CommandLineParser, fraction, number_type
from basics.errors import UsageError, reports_errors
from basics.outputs import check_output_file


def build_parser() -> CommandLineParser:
    parser = CommandLineParser(description=__doc__)
    parser.add_argument("video", help="the video the table was made from")
    parser.add_argument("table", help="its flat table (NAME.csv or NAME_filtered.csv)")
    parser.add_argument("--out", help="the labelled video (default: TABLE's name + _labelled.mp4, beside it)")
    parser.add_argument("--pcutoff", type=fraction, default=0.1, help="least confidence of a landmark drawn")
    parser.add_argument("--fps", type=number_type(float, 1, 1000), help="frame rate of the labelled video "
                        "(default: the video's)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing labelled video")
    return parser


@reports_errors
def main(argv: list[str] | None = None) -> int:
    args: argparse.Namespace = build_parser().parse_args(argv)
    table_path = Path(args.table)
    out = Path(args.out) if args.out else table_path.with_name(f"{table_path.stem}_labelled.mp4")
    if out.suffix.lower() != ".mp4":
        raise UsageError(f"--out {out}: give a .mp4 file name")
    check_output_file(out, "--out")
    if out.exists() and not args.overwrite:
        raise UsageError(f"--out {out}: exists; give --overwrite to replace it, or another --out")
    table = read_flat_table(table_path)
    partial = out.with_name(f".{out.stem}.{os.getpid()}.partial.mp4")
    try:
        written = label_video(Path(args.video), table, partial, args.pcutoff, args.fps)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    print(f"wrote {out}: {written} frames, landmarks of confidence >= {args.pcutoff:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
