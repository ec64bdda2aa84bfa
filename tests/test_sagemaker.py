"""basics/sagemaker.py: train_simple.py in a simulated SageMaker training container takes its data
from the channel, survives a spot interruption by resuming when started again, and leaves its
model in SM_MODEL_DIR; without the SM_* variables nothing changes."""
import argparse
import json
import re
import signal
from pathlib import Path

import pytest
import torch

import evaluate
from basics.errors import DataError
from basics.sagemaker import CHECKPOINT_DIR, apply_job_defaults
from conftest import SIGNAL_AT_STEP, SMALL_META, make_faces, run_cli
from tools.sagemaker_job import METRIC_DEFINITIONS

# SageMaker passes every hyperparameter with a value, so booleans arrive as True
HYPERPARAMETERS = ["--backbone", "resnet18", "--input-size", "64", "--no-pretrained", "True", "--batch-size", "4",
                   "--num-workers", "0", "--epochs", "3"]


def job_container(root: Path) -> tuple[dict, Path, list[str]]:
    """An /opt/ml-style tree with DogFLW's layout (and its keypoint metadata) in the training
    channel: the SM_* variables, the checkpoint folder and the job's command line."""
    channel, model, checkpoints = root / "input/data/training", root / "model", root / "checkpoints"
    make_faces(channel, {"train": 20, "test": 6}, SMALL_META, image_size=80)
    (channel / "meta.json").write_text(json.dumps(SMALL_META))
    env = {"SM_MODEL_DIR": str(model), "SM_CHANNEL_TRAINING": str(channel)}
    return env, checkpoints, ["train_simple.py", *HYPERPARAMETERS, "--meta", str(channel / "meta.json"),
                              "--work-dir", str(checkpoints)]


def last_weights(folder: Path) -> dict:
    return torch.load(folder / "last.pth", weights_only=False)["train_model"]


def test_a_spot_interrupted_job_started_again_resumes_to_the_uninterrupted_result(tmp_path):
    env, checkpoints, command = job_container(tmp_path / "job")
    stopped = run_cli("-c", SIGNAL_AT_STEP, "6", str(int(signal.SIGTERM)), *command[1:], check=False, env=env)
    assert stopped.returncode == 130 and "interrupted by SIGTERM" in stopped.stderr  # in epoch 2: after last.pth
    assert json.loads((checkpoints / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] == 1
    restarted = run_cli(*command, env=env)  # what a restarted managed spot job runs
    said = restarted.stdout
    assert f"--resume auto: continuing the run in {checkpoints} from its last.pth (1 epochs done, then" in said
    env_whole, whole, command_whole = job_container(tmp_path / "uninterrupted")
    run_cli(*command_whole, env=env_whole)
    resumed, uninterrupted = last_weights(checkpoints), last_weights(whole)
    assert all(torch.equal(resumed[name], uninterrupted[name]) for name in uninterrupted)
    model_dir = Path(env["SM_MODEL_DIR"])
    assert sorted(p.name for p in model_dir.iterdir()) == ["best.pth", "curves.png", "metrics.jsonl",
                                                           "test_metrics.json"]
    assert evaluate.main(["--checkpoint", str(model_dir / "best.pth"), "--ann", str(checkpoints / "annotations" /
                          "test.json"), "--device", "cpu", "--num-workers", "0"]) == 0
    again = run_cli(*command, env=env)  # a job restarted after it had finished
    assert f"{checkpoints}: its run has finished its 3 epochs already" in again.stdout


def test_the_log_has_lines_that_metric_definitions_read_and_no_progress_bars(tmp_path):
    env, _, command = job_container(tmp_path / "job")
    result = run_cli(*command, "--epochs", "1", env=env)
    assert "\r" not in result.stderr + result.stdout
    epoch_line = next(line for line in result.stdout.splitlines() if line.startswith("epoch 1:"))
    assert all(re.search(metric["Regex"], epoch_line) for metric in METRIC_DEFINITIONS)


def test_without_the_sagemaker_variables_a_second_start_is_refused_as_before(tmp_path):
    env, checkpoints, command = job_container(tmp_path / "job")
    channel = env["SM_CHANNEL_TRAINING"]
    plain = [*command, "--epochs", "1", "--data-root", channel, "--ann-root", str(tmp_path / "ann")]
    run_cli(*plain)
    second = run_cli(*plain, check=False)
    assert second.returncode == 1 and "holds a run already; continue it with --resume" in second.stderr
    assert not Path(env["SM_MODEL_DIR"]).exists()


def test_job_defaults_come_from_the_channel_and_given_flags_win(tmp_path, monkeypatch):
    channel = tmp_path / "channel"
    channel.mkdir()
    monkeypatch.setenv("SM_MODEL_DIR", str(tmp_path / "model"))
    monkeypatch.setenv("SM_CHANNEL_TRAINING", str(channel))
    args = argparse.Namespace(channel="training", work_dir=None, resume=None, ann_root="x", data_root=None)
    apply_job_defaults(args, given=set())
    assert (args.work_dir, args.resume, args.data_root) == (CHECKPOINT_DIR, "auto", str(channel))
    assert args.ann_root == str(Path(CHECKPOINT_DIR) / "annotations")  # DogFLW's layout: converted there
    (channel / "train.json").write_text("{}")
    args = argparse.Namespace(channel="training", work_dir="mine", resume=None, ann_root="x", data_root=None)
    apply_job_defaults(args, given={"work_dir"})
    assert (args.work_dir, args.ann_root) == ("mine", str(channel))  # COCO files in the channel: read there
    with pytest.raises(DataError, match="--channel other: this SageMaker job has no such input channel"):
        apply_job_defaults(argparse.Namespace(channel="other"), given=set())
