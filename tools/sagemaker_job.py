"""Start train_simple.py as a SageMaker training job (managed spot by default) on DogFLW in S3.

    python tools/sagemaker_job.py --data-s3-uri s3://BUCKET/dogflw --output-s3-uri s3://BUCKET/runs \\
        --role arn:aws:iam::123456789012:role/SageMakerRole --dry-run -- --epochs 3 --no-pretrained
    python tools/sagemaker_job.py --data-s3-uri s3://BUCKET/dogflw --output-s3-uri s3://BUCKET/runs \\
        --role arn:aws:iam::123456789012:role/SageMakerRole --instance-type ml.g5.12xlarge -- --epochs 210

--data-s3-uri is the S3 folder holding DogFLW's own layout (train/images, train/labels,
test/images, test/labels); it reaches the job as the channel "training". Everything after `--`
goes to train_simple.py as hyperparameters, which SageMaker passes as `--name value` (a bare
`--flag` as `--flag True`). In the job train_simple.py takes its data from the channel, runs in
the checkpoint folder that SageMaker keeps in step with --checkpoint-s3-uri, continues its run
when a spot job is restarted, and copies best.pth and its metrics into the model folder that
SageMaker uploads (basics/sagemaker.py). On an instance with several GPUs (or several instances), the
job runs `torchrun --nproc_per_node=GPUS train_simple.py ...`. --dry-run prints the job's
settings as JSON and starts nothing; a real start needs the sagemaker package (pip install
'sagemaker>=3') and AWS credentials.

Written against sagemaker 3.20.0's source (sagemaker-train 1.20.0, sagemaker-core 2.20.0) and
checked to build its request with 3.27.0: sagemaker.train.ModelTrainer with SourceCode, Compute,
InputData, CheckpointConfig, StoppingCondition, OutputDataConfig and MetricDefinition from
sagemaker.core.training.configs (sagemaker.train.configs re-exports them, deprecated) and
sagemaker.train.distributed.Torchrun.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from pathlib import Path

import _repo  # the repository on sys.path: tools/_repo.py
from basics.cli import CommandLineParser, bounded_int, number_type
from basics.errors import UsageError, reports_errors
from basics.sagemaker import CHECKPOINT_DIR

ROOT = Path(__file__).resolve().parents[1]
ENTRY_SCRIPT = "train_simple.py"
# the AWS Deep Learning Container for PyTorch training on GPUs; its torch satisfies requirements.txt
PYTORCH_IMAGE_TAG = "2.5.1-gpu-py311-cu124-ubuntu22.04-sagemaker"
CHANNEL = "training"
# not uploaded with the source: local data, runs, environments and caches (shutil.ignore_patterns: names at any depth)
IGNORE_PATTERNS = [".git", ".venv", "__pycache__", ".pytest_cache", ".cache", ".ipynb_checkpoints", ".DS_Store",
                   "data", "work_dirs", "gpu_check_data", "*.pth", "*.onnx"]
# read from the line train_simple.py prints after each epoch, e.g.
# "epoch 2: loss 10.9392, val NME_IOD 36.588 (best 36.588), 16 img/s, 20 s"
METRIC_DEFINITIONS = [
    {"Name": "train:loss", "Regex": r"epoch \d+: loss ([0-9.eE+-]+)"},
    {"Name": "val:NME_IOD", "Regex": r"val NME_IOD ([0-9.]+)"},
    {"Name": "train:images_per_s", "Regex": r"([0-9.]+) img/s"},
]
GPUS = {  # GPUs per instance of the common SageMaker GPU instance types
    **{f"ml.{family}.{size}": 1 for family in ("g5", "g6", "g6e") for size in
       ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")},
    **{f"ml.{family}.{size}": 4 for family in ("g5", "g6", "g6e") for size in ("12xlarge", "24xlarge")},
    **{f"ml.{family}.48xlarge": 8 for family in ("g5", "g6", "g6e")},
    "ml.p4d.24xlarge": 8, "ml.p4de.24xlarge": 8, "ml.p5.48xlarge": 8, "ml.p5e.48xlarge": 8, "ml.p5en.48xlarge": 8,
}
MAX_HOURS = 28 * 24  # SageMaker's longest training job
JOB_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9])*")
ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/\S+")
REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d")
INSTALL = "the sagemaker package (version 3) is not installed: pip install 'sagemaker>=3'"


def build_parser() -> CommandLineParser:
    parser = CommandLineParser(description=__doc__, usage="%(prog)s [options] [-- TRAIN_SIMPLE_FLAGS ...]")
    parser.add_argument("--data-s3-uri", required=True, help="S3 folder with DogFLW's train/ and test/")
    parser.add_argument("--output-s3-uri", required=True, help="S3 folder for the job's output")
    parser.add_argument("--checkpoint-s3-uri", help="S3 folder for the run folder (default: OUTPUT/checkpoints)")
    parser.add_argument("--role", help="IAM role ARN the job runs as (required unless --dry-run)")
    parser.add_argument("--region", default=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                        or "us-east-1", help="AWS region (default: $AWS_REGION, $AWS_DEFAULT_REGION or us-east-1)")
    parser.add_argument("--image-uri", help="training image (default: the PyTorch GPU Deep Learning Container "
                        f"{PYTORCH_IMAGE_TAG} of --region)")
    parser.add_argument("--instance-type", default="ml.g5.xlarge", help="SageMaker instance type")
    parser.add_argument("--instance-count", type=bounded_int(1, 64), default=1, help="instances")
    parser.add_argument("--gpus-per-instance", type=bounded_int(1, 64),
                        help="processes per instance (default: the instance type's GPUs, for the common types)")
    parser.add_argument("--spot", action=argparse.BooleanOptionalAction, default=True, help="managed spot training")
    parser.add_argument("--max-run-hours", type=number_type(float, 0, MAX_HOURS, low_open=True), default=24.0,
                        help="longest time the job may train")
    parser.add_argument("--max-wait-hours", type=number_type(float, 0, MAX_HOURS, low_open=True),
                        help="with --spot, longest time for waiting plus training (default: 2 x --max-run-hours)")
    parser.add_argument("--job-name", default="dogflw-landmarks", help="base job name (SageMaker appends the time)")
    parser.add_argument("--wait", action="store_true", help="follow the job's logs until it ends")
    parser.add_argument("--dry-run", action="store_true", help="print the job's settings as JSON; start nothing")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The launcher's flags, and in .hyperparameters the train_simple.py flags given after `--`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = build_parser().parse_args(argv[:cut])
    args.hyperparameters = parse_hyperparameters(argv[cut + 1:])
    return args


def parse_hyperparameters(tokens: list[str]) -> dict[str, str]:
    """`--name value`, `--name=value` and bare `--flag` (-> "True") pairs as {name: value}."""
    found: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or len(token) == 2:
            raise UsageError(f"after --: {token!r} is not a --name; train_simple.py flags take one value each "
                             "(SageMaker passes every hyperparameter as --name value)")
        name, has_value, value = token[2:].partition("=")
        if not has_value:
            follows = i + 1 < len(tokens) and not tokens[i + 1].startswith("--")
            value = tokens[i + 1] if follows else "True"
            i += follows
        if name in found:
            raise UsageError(f"after --: --{name} is given twice")
        found[name] = value
        i += 1
    return found


def s3_folder(uri: str, flag: str) -> str:
    """An s3://bucket/... URI, without a trailing slash."""
    if not re.fullmatch(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/\S*)?", uri):
        raise UsageError(f"{flag} {uri}: not an S3 URI; give s3://BUCKET/FOLDER")
    return uri.rstrip("/")


def gpus_per_instance(args: argparse.Namespace) -> int:
    """--gpus-per-instance, else the instance type's GPUs from GPUS."""
    if not args.instance_type.startswith("ml."):
        raise UsageError(f"--instance-type {args.instance_type}: not a SageMaker instance type (e.g. ml.g5.xlarge)")
    if args.gpus_per_instance is not None:
        return args.gpus_per_instance
    if args.instance_type not in GPUS:
        raise UsageError(f"--instance-type {args.instance_type}: its GPUs are not known here; give "
                         "--gpus-per-instance")
    return GPUS[args.instance_type]


def stopping_condition(args: argparse.Namespace) -> dict[str, int]:
    """Max run and, with spot, max wait (>= max run), in seconds."""
    max_run = round(args.max_run_hours * 3600)
    if not args.spot:
        if args.max_wait_hours is not None:
            raise UsageError("--max-wait-hours: is for spot jobs; drop it or drop --no-spot")
        return {"max_runtime_in_seconds": max_run}
    max_wait = round(args.max_wait_hours * 3600) if args.max_wait_hours is not None else min(
        2 * max_run, MAX_HOURS * 3600)
    if max_wait < max_run:
        raise UsageError(f"--max-wait-hours {max_wait / 3600:g}: is below --max-run-hours {args.max_run_hours:g}; "
                         "the wait for spot capacity counts in it")
    return {"max_runtime_in_seconds": max_run, "max_wait_time_in_seconds": max_wait}


def container_command(hyperparameters: dict[str, str], processes: int, instances: int) -> list[str]:
    """What SageMaker's driver runs in the container (multi-node torchrun also gets the master's address)."""
    flags = [part for name, value in hyperparameters.items() for part in (f"--{name}", value)]
    if processes == 1 and instances == 1:
        return ["python", ENTRY_SCRIPT, *flags]
    return ["torchrun", f"--nnodes={instances}", f"--nproc_per_node={processes}", ENTRY_SCRIPT, *flags]


def check_names(args: argparse.Namespace) -> None:
    """--job-name, --role and --region, each of the form SageMaker accepts."""
    if not JOB_NAME.fullmatch(args.job_name) or len(args.job_name) > 48:
        raise UsageError(f"--job-name {args.job_name}: use at most 48 letters, digits and hyphens "
                         "(SageMaker appends -YYYYMMDDhhmmss)")
    if args.role is not None and not ROLE_ARN.fullmatch(args.role):
        raise UsageError(f"--role {args.role}: not an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)")
    if not REGION.fullmatch(args.region):
        raise UsageError(f"--region {args.region}: not an AWS region (e.g. us-east-1)")


def job_settings(args: argparse.Namespace) -> dict:
    """Everything the job is started with, as plain JSON-ready values: what --dry-run prints and
    what start_job turns into ModelTrainer's objects (field names as in sagemaker.train's configs)."""
    check_names(args)
    output = s3_folder(args.output_s3_uri, "--output-s3-uri")
    checkpoints = s3_folder(args.checkpoint_s3_uri or f"{output}/checkpoints", "--checkpoint-s3-uri")
    data = s3_folder(args.data_s3_uri, "--data-s3-uri") + "/"  # a folder: s3://b/dogflw/ leaves out s3://b/dogflw2
    processes = gpus_per_instance(args)
    distributed = processes > 1 or args.instance_count > 1
    hyperparameters = dict(args.hyperparameters)
    return {
        "base_job_name": args.job_name,
        "region": args.region,
        "role": args.role,
        "image_uri": args.image_uri or f"763104351884.dkr.ecr.{args.region}.amazonaws.com/pytorch-training:"
                                      f"{PYTORCH_IMAGE_TAG}",
        "source_code": {"source_dir": str(ROOT), "entry_script": ENTRY_SCRIPT, "requirements": "requirements.txt",
                        "ignore_patterns": IGNORE_PATTERNS},
        "compute": {"instance_type": args.instance_type, "instance_count": args.instance_count,
                    "enable_managed_spot_training": args.spot},
        "torchrun_processes_per_node": processes if distributed else None,
        "stopping_condition": stopping_condition(args),
        "checkpoint": {"s3_uri": checkpoints, "local_path": CHECKPOINT_DIR},
        "output_s3_uri": output,
        "input_channels": [{"channel_name": CHANNEL, "data_source": data}],
        "hyperparameters": hyperparameters,
        "command": shlex.join(container_command(hyperparameters, processes, args.instance_count)),
        "metric_definitions": METRIC_DEFINITIONS,
    }


def start_job(settings: dict, wait: bool) -> str:
    """Start the job `settings` describes with sagemaker 3's ModelTrainer; returns the job's name."""
    try:
        from sagemaker.core.helper.session_helper import Session
        from sagemaker.core.training.configs import (CheckpointConfig, Compute, InputData, MetricDefinition,
                                                     OutputDataConfig, SourceCode, StoppingCondition)
        from sagemaker.train import ModelTrainer
        from sagemaker.train.distributed import Torchrun
        import boto3  # sagemaker's own dependency, as is botocore
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError as err:
        raise UsageError(f"{INSTALL} ({err})") from None
    processes = settings["torchrun_processes_per_node"]
    try:
        trainer = ModelTrainer(
            sagemaker_session=Session(boto_session=boto3.Session(region_name=settings["region"])),
            role=settings["role"], base_job_name=settings["base_job_name"], training_image=settings["image_uri"],
            source_code=SourceCode(**settings["source_code"]),
            distributed=Torchrun(process_count_per_node=processes) if processes else None,
            compute=Compute(**settings["compute"]),
            stopping_condition=StoppingCondition(**settings["stopping_condition"]),
            checkpoint_config=CheckpointConfig(**settings["checkpoint"]),
            output_data_config=OutputDataConfig(s3_output_path=settings["output_s3_uri"]),
            input_data_config=[InputData(**channel) for channel in settings["input_channels"]],
            hyperparameters=settings["hyperparameters"],
        ).with_metric_definitions([MetricDefinition(name=m["Name"], regex=m["Regex"])
                                   for m in settings["metric_definitions"]])
        trainer.train(wait=wait, logs=wait)
    except (BotoCoreError, ClientError) as err:  # no credentials, no access, AWS unreachable
        raise UsageError(f"AWS: {err}") from None
    return trainer._latest_training_job.training_job_name  # as in ModelTrainer's own docstring example


@reports_errors
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = job_settings(args)
    if args.dry_run:
        print(json.dumps(settings, indent=2))
        return 0
    if args.role is None:
        raise UsageError("--role: required to start a job (an IAM role ARN SageMaker can assume); "
                         "or give --dry-run")
    name = start_job(settings, args.wait)
    print(f"SageMaker training job {name} ({args.region}): {settings['checkpoint']['local_path']} is kept in "
          f"{settings['checkpoint']['s3_uri']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
