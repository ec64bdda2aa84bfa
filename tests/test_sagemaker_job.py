"""tools/sagemaker_job.py: the dry run shows the job it would start, without sagemaker or AWS;
the metric regexes read train_simple.py's epoch line; mistakes are one line."""
import json
import re
import subprocess
import sys

import pytest

from conftest import REPO
from tools import sagemaker_job

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
REQUIRED = ["--data-s3-uri", "s3://my-bucket/dogflw", "--output-s3-uri", "s3://my-bucket/runs/"]
EPOCH_LINE = "epoch 2: loss 10.9392, val NME_IOD 36.588 (best 36.588), 16 img/s, 20 s"


def dry_run(capsys, *flags: str) -> dict:
    assert sagemaker_job.main([*REQUIRED, "--dry-run", *flags]) == 0
    return json.loads(capsys.readouterr().out)


def test_dry_run_prints_the_job_as_json(capsys):
    settings = dry_run(capsys, "--role", ROLE, "--region", "eu-west-1")
    assert settings["source_code"]["entry_script"] == "train_simple.py"
    assert settings["source_code"]["source_dir"] == str(REPO)
    assert settings["source_code"]["requirements"] == "requirements.txt"
    assert {".venv", "data", "work_dirs"} <= set(settings["source_code"]["ignore_patterns"])
    assert settings["image_uri"] == ("763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch-training:"
                                     f"{sagemaker_job.PYTORCH_IMAGE_TAG}")
    assert settings["compute"] == {"instance_type": "ml.g5.xlarge", "instance_count": 1,
                                   "enable_managed_spot_training": True}
    assert settings["input_channels"] == [{"channel_name": "training", "data_source": "s3://my-bucket/dogflw/"}]
    assert settings["role"] == ROLE and settings["metric_definitions"] == sagemaker_job.METRIC_DEFINITIONS


def test_spot_waits_twice_the_run_by_default_and_not_at_all_without_spot(capsys):
    assert dry_run(capsys, "--max-run-hours", "3")["stopping_condition"] == {
        "max_runtime_in_seconds": 3 * 3600, "max_wait_time_in_seconds": 6 * 3600}
    settings = dry_run(capsys, "--no-spot", "--max-run-hours", "3")
    assert settings["compute"]["enable_managed_spot_training"] is False
    assert settings["stopping_condition"] == {"max_runtime_in_seconds": 3 * 3600}


def test_checkpoints_go_under_the_output_unless_told_otherwise(capsys):
    assert dry_run(capsys)["checkpoint"] == {"s3_uri": "s3://my-bucket/runs/checkpoints",
                                             "local_path": "/opt/ml/checkpoints"}
    assert dry_run(capsys, "--checkpoint-s3-uri", "s3://other/ckpt")["checkpoint"]["s3_uri"] == "s3://other/ckpt"


def test_flags_after_double_dash_become_hyperparameters_as_sagemaker_passes_them(capsys):
    settings = dry_run(capsys, "--", "--epochs", "3", "--no-pretrained", "--lr=0.002", "--seed", "-1")
    assert settings["hyperparameters"] == {"epochs": "3", "no-pretrained": "True", "lr": "0.002", "seed": "-1"}
    assert settings["command"] == "python train_simple.py --epochs 3 --no-pretrained True --lr 0.002 --seed -1"
    assert settings["torchrun_processes_per_node"] is None


def test_the_data_and_run_folder_are_left_to_the_job_defaults_unless_given(capsys):
    assert "data-root" not in dry_run(capsys)["hyperparameters"]  # basics/sagemaker.py: the channel
    assert dry_run(capsys, "--", "--data-root", "/x")["hyperparameters"]["data-root"] == "/x"


def test_a_multi_gpu_instance_runs_torchrun_with_a_process_per_gpu(capsys):
    settings = dry_run(capsys, "--instance-type", "ml.g5.12xlarge", "--", "--epochs", "3")
    assert settings["torchrun_processes_per_node"] == 4
    assert settings["command"].startswith("torchrun --nnodes=1 --nproc_per_node=4 train_simple.py ")
    assert dry_run(capsys, "--instance-type", "ml.p5.48xlarge")["torchrun_processes_per_node"] == 8
    unlisted = dry_run(capsys, "--instance-type", "ml.x9.huge", "--gpus-per-instance", "2")
    assert unlisted["torchrun_processes_per_node"] == 2


def test_dry_run_works_without_the_sagemaker_package(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "sagemaker", None)  # makes `import sagemaker...` fail
    assert dry_run(capsys, "--role", ROLE)["base_job_name"] == "dogflw-landmarks"
    assert sagemaker_job.main([*REQUIRED, "--dry-run"]) == 0  # no --role needed for a dry run


def test_without_sagemaker_a_real_start_says_how_to_install_it(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "sagemaker", None)
    assert sagemaker_job.main([*REQUIRED, "--role", ROLE]) != 0
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "pip install 'sagemaker>=3'" in err[0] and captured.out == "", err


def test_metric_regexes_read_the_epoch_line():
    values = {m["Name"]: re.search(m["Regex"], EPOCH_LINE).group(1) for m in sagemaker_job.METRIC_DEFINITIONS}
    assert values == {"train:loss": "10.9392", "val:NME_IOD": "36.588", "train:images_per_s": "16"}
    assert re.search(sagemaker_job.METRIC_DEFINITIONS[0]["Regex"], "epoch 7: loss 1.5e-05, val").group(1) == "1.5e-05"


@pytest.mark.parametrize("flags, named", [
    (["--data-s3-uri", "/local/dogflw"], "--data-s3-uri"),
    (["--output-s3-uri", "my-bucket/runs"], "--output-s3-uri"),
    (["--checkpoint-s3-uri", "https://x"], "--checkpoint-s3-uri"),
    (["--max-run-hours", "4", "--max-wait-hours", "3"], "--max-wait-hours"),
    (["--no-spot", "--max-wait-hours", "3"], "--max-wait-hours"),
    (["--role", "SageMakerRole"], "--role"),
    (["--instance-type", "ml.x9.huge"], "--gpus-per-instance"),
    (["--instance-type", "g5.xlarge"], "--instance-type"),
    (["--job-name", "my_job"], "--job-name"),
    (["--region", "Europe"], "--region"),
    (["--", "epochs", "3"], "epochs"),
    (["--", "--epochs", "3", "--epochs", "4"], "--epochs"),
    (["--", "--extra-train", "a.json", "b.json"], "b.json"),
])
def test_a_bad_flag_is_one_line_naming_it(flags, named, capsys):
    assert sagemaker_job.main([*REQUIRED, "--dry-run", *flags]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and named in err[0] and captured.out == "", err


@pytest.mark.parametrize("flags", [["--instance-count", "0"], ["--max-run-hours", "0"], ["--max-run-hours", "700"],
                                   ["--gpus-per-instance", "0"]])
def test_a_number_out_of_range_is_refused_by_the_parser_in_one_line(flags, capsys):
    with pytest.raises(SystemExit) as refused:
        sagemaker_job.main([*REQUIRED, "--dry-run", *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert refused.value.code == 2 and len(err) == 1 and flags[0] in err[0], err


def test_a_real_start_without_role_asks_for_it(capsys):
    assert sagemaker_job.main(REQUIRED) == 1
    assert "--role" in capsys.readouterr().err


def test_help_runs_from_the_repository_root_without_sagemaker():
    result = subprocess.run([sys.executable, "tools/sagemaker_job.py", "--help"], cwd=REPO, capture_output=True,
                            text=True)
    assert result.returncode == 0 and "--max-wait-hours" in result.stdout and "--no-spot" in result.stdout


@pytest.mark.parametrize("doc", ["README.md", "docs/USAGE.md"])
def test_the_launcher_commands_the_docs_show_run_as_shown(doc, capsys):
    text = (REPO / doc).read_text(encoding="utf-8").replace("\\\n", " ")
    commands = [line.split() for line in text.splitlines() if line.startswith("python tools/sagemaker_job.py")]
    assert commands, f"{doc} shows no launcher command"
    for words in commands:
        assert "--dry-run" in words and sagemaker_job.main(words[2:]) == 0
        settings = json.loads(capsys.readouterr().out)
        assert settings["hyperparameters"]["epochs"] == "210"
