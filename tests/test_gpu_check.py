"""tools/gpu_check.sh --cpu-smoke: every step of the GPU check, tiny and on CPU, passes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_cpu_smoke_passes_every_step_and_leaves_at_most_8_files(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "OUT": str(out), "WORK": str(work), "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(["bash", "tools/gpu_check.sh", "--cpu-smoke"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    steps = {step["step"]: step["status"] for step in summary["steps"]}
    expected = {"setup", "convert", "train_hrnet", "train_effv2s", "resume", "evaluate_flip", "detector", "predict",
                "export_onnx", "torchrun", "bench_hrnet", "bench_effv2s", "profile", "acc_faces68", "acc_dogs"}
    assert set(steps) == expected
    assert all(status == "passed" for status in steps.values()), steps
    table = (out / "summary.md").read_text()
    assert all(f"| {name} | passed |" in table for name in expected)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8, files
    assert {"summary.md", "summary.json", "profile.txt", "combined.log"} <= {p.name for p in files}
