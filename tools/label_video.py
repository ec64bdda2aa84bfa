"""Draw a landmark table on its video: boxes, face ids and landmarks, frame by frame.

    python tools/label_video.py clip.mp4 predictions/clip_filtered.csv            # -> predictions/clip_filtered_labelled.mp4
    python tools/label_video.py clip.mp4 predictions/clip.csv --pcutoff 0.5 --out raw.mp4

TABLE is a flat table that tools/predict.py wrote for VIDEO (NAME.csv, raw, or NAME_filtered.csv);
row k is drawn on frame k of the file. Landmarks whose confidence is below --pcutoff are not
drawn (DeepLabCut's pcutoff; points filled in by filtering have confidence 0). The video is
written aside and moved into place when complete; an existing one is replaced only with
--overwrite. The table of another video (or a part of one) is refused before drawing: it must have a
row for every frame of the file, and the NAME_summary.json beside it, if any, must name the video.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import _repo  # the repository on sys.path: tools/_repo.py
from analysis.tables import LandmarkTable, read_flat_table
from analysis.video import VideoFrames, label_video
from basics.cli import CommandLineParser, fraction, number_type
from basics.errors import UsageError, reports_errors
from basics.outputs import check_output_file, check_outputs


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


def video_frames(video: Path, expected: int) -> int:
    """The frames of a video: the count its container states where that is `expected`, else counted by
    reading the file (a stated count can be absent, approximate or more than a truncated file holds)."""
    frames = VideoFrames(video)
    if frames.claimed and frames.claimed == expected:
        frames.capture.release()
        return expected
    for _ in frames:
        pass
    return frames.positions


def recorded_video(table_path: Path) -> tuple[Path, str | None]:
    """The NAME_summary.json beside a table NAME.csv or NAME_filtered.csv, and the file name of the video it
    records (None where there is no readable summary)."""
    summary = table_path.with_name(f"{table_path.stem.removesuffix('_filtered')}_summary.json")
    try:
        record = json.loads(summary.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return summary, None
    name = record.get("video") if isinstance(record, dict) else None
    return summary, Path(name).name if isinstance(name, str) else None


def check_table_of(video: Path, table: LandmarkTable, table_path: Path) -> None:
    """UsageError unless `table` has a row for every frame of `video` (0, 1, ..., its last) and no other,
    and its summary, if any, names this video."""
    drawn = sorted({int(frame) for frame in table.frames})
    count = video_frames(video, len(drawn))
    summary, recorded = recorded_video(table_path)
    if drawn == list(range(count)) and recorded in (None, video.name):
        return
    rows = f"rows for {len(drawn)} frames ({drawn[0]} to {drawn[-1]})" if drawn else "no rows"
    named = f", and its {summary.name} names the video {recorded}" if recorded not in (None, video.name) else ""
    raise UsageError(f"{table_path}: not the complete table of {video}: it has {rows}, the video {count}{named}; "
                     "give the video it was made from, or that video's table")


@reports_errors
def main(argv: list[str] | None = None) -> int:
    args: argparse.Namespace = build_parser().parse_args(argv)
    table_path = Path(args.table)
    out = Path(args.out) if args.out else table_path.with_name(f"{table_path.stem}_labelled.mp4")
    if out.suffix.lower() != ".mp4":
        raise UsageError(f"--out {out}: give a .mp4 file name")
    check_outputs({"VIDEO": args.video, "TABLE": table_path}, {"--out": out}, args.overwrite)
    check_output_file(out, "--out")
    table = read_flat_table(table_path)
    check_table_of(Path(args.video), table, table_path)
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
