import json

from basics.dogflw import convert
from conftest import SMALL_META, make_faces
from tools import benchmark

TINY = ["--backbone", "resnet18", "--input-size", "64", "--batch-size", "4", "--device", "cpu",
        "--steps", "2", "--warmup", "1", "--repeats", "2"]


def test_synthetic_benchmark_prints_one_json_line(capsys):
    assert benchmark.main([*TINY, "--num-keypoints", "5", "--json"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    result = json.loads(line)
    assert result["train_images_per_s"] > 0 and result["eval_images_per_s"] > 0 and result["peak_memory_mb"] > 0
    assert "data_images_per_s" not in result and result["device"] == "cpu"


def test_real_data_benchmark_times_the_pipeline_too(tmp_path, capsys):
    root = make_faces(tmp_path / "faces", {"train": 24}, SMALL_META)
    convert(root, tmp_path / "ann", SMALL_META)
    assert benchmark.main([*TINY, "--ann", str(tmp_path / "ann" / "train.json"), "--num-workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "data pipeline" in out and "img/s with 1 workers" in out and "x training" in out


def test_training_flags_reach_the_timed_step(capsys):
    assert benchmark.main([*TINY, "--num-keypoints", "5", "--json", "--sigma", "3", "--heatmap-stride", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["training_flags"] == ["--sigma", "3", "--heatmap-stride", "2"]
    assert result["model_config"]["sigma"] == 3 and result["model_config"]["heatmap_stride"] == 2
    assert result["train_images_per_s"] > 0
