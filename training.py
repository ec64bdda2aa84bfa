"""What every training run does, whatever it trains: the skeleton both trainers share.

train_simple.py (landmarks) and detector/train.py (face boxes) each supply what is their
own: data, model, the forward pass and loss of a step, and validation. The rest lives here, once:
- the run flags both take (`add_run_flags`, `add_ema_flag`), --resume's settings and checkpoint
  (`parse_run`) and --init-from's architecture (`adopt_architecture`);
- the start of every set-up: checkpoint, seed, device, and the run folder, never another run's
  (`begin_run`, `run_folder`);
- the loaders' settings, the training loader and the evaluation loader;
- mixed precision (`autocast_dtype`), the warm-up + cosine schedule (`warmup_cosine`);
- `Run`, the state every run holds (`Run.create`), the EMA of its weights, and what last.pth
  keeps of it and restores;
- `optimise`: backward, the gradient norm, the one host sync, and the step only when finite;
- `train_epoch` with the non-finite-step guard and the unreadable-image bound, `finish_epoch`
  (metrics.jsonl line, last.pth, best.pth), and `run_epochs`, the loop with the stop and halt
  protocol: Ctrl-C or SIGTERM saves last.pth at a clean point and ends in one line.
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from basics.checkpoints import CONFIG_KEYS, TRAINING_STATE_KEYS, read_checkpoint, save_checkpoint
from basics.cli import bounded_int, fraction, number_type
from basics.ema import WeightAverage
from basics.errors import CheckpointError, Interrupted, RunFinished, TrainingStopped, UsageError, UserFacingError
from basics.run_utils import (MetricsLog, StopRequest, broadcast_from_rank0, choose_work_dir, given_flags,
                              ignore_ctrl_c, pick_device, resumed_settings, seed_everything, setup_distributed,
                              sum_across_ranks)
from basics.sagemaker import apply_job_defaults, publish_model
from dataset import EpochSampler

MAX_SEED = 2**32 - 1  # NumPy's and torch's seeds
COST_AFTER_STEPS = 20  # a run says what it will cost after this many steps
# what --resume takes from the command line in both trainers; every other setting is the run's own
RESUME_MAY_CHANGE = ("resume", "epochs", "work_dir", "data_root", "ann_root", "device", "num_workers",
                     "max_nonfinite_steps", "max_unreadable", "channel")
PROGRESS_EVERY = 20  # steps between progress lines when stderr is no terminal (a SageMaker job's CloudWatch log)


def add_ema_flag(group: argparse._ArgumentGroup) -> None:
    """--ema-decay, the same in both trainers: Run.create keeps the EMA it asks for."""
    group.add_argument("--ema-decay", type=number_type(float, 0, 1, high_open=True), default=0.999,
                       help="EMA of weights for validation and best.pth; 0 turns it off")


def checkpoint_bytes(model: torch.nn.Module) -> int:
    """Disk needed by last.pth, best.pth and a temporary copy: each holds the weights four times
    (inference EMA, training weights, two AdamW moments)."""
    tensors = [*model.parameters(), *model.buffers()]
    return 3 * 4 * sum(t.numel() * t.element_size() for t in tensors)


def add_run_flags(group: argparse._ArgumentGroup, default_work_dir: str, workers: int) -> None:
    """The flags of where and how a run goes, the same in both trainers."""
    group.add_argument("--work-dir", help=f"run folder (default: {default_work_dir}, or -2, -3, ... when that holds "
                       "an earlier run; with --resume, the checkpoint's folder)")
    group.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N or mps")
    group.add_argument("--resume", help="last.pth to continue from: the run goes on with its own settings; of the "
                       f"other flags only {', '.join('--' + f.replace('_', '-') for f in RESUME_MAY_CHANGE[1:])} "
                       "are taken from this command line. auto: --work-dir's last.pth if there is one (a restarted "
                       "job continues its run), else a new run; on in a SageMaker job")
    group.add_argument("--channel", default="training", help="in a SageMaker job (SM_MODEL_DIR set), the input "
                       "channel holding the data: DogFLW's layout, or COCO files with their images")
    group.add_argument("--num-workers", type=bounded_int(0, 256), default=workers,
                       help="DataLoader worker processes (default: %(default)s: the cores, at most 8)")
    group.add_argument("--seed", type=bounded_int(0, MAX_SEED), default=0,
                       help="fixes initialisation, shuffle and augmentation")
    group.add_argument("--max-nonfinite-steps", type=bounded_int(1, 10**6), default=20,
                       help="stop after this many steps in a row with a non-finite loss or gradient")
    group.add_argument("--max-unreadable", type=fraction, default=0.02,
                       help="stop when more than this fraction of an epoch's images cannot be read")


def parse_run(parser: argparse.ArgumentParser, argv: list[str] | None, kind: str,
              may_change: tuple[str, ...] = RESUME_MAY_CHANGE) -> tuple[argparse.Namespace, dict | None]:
    """The run's settings and, with --resume, its checkpoint (read once, checked to hold a training
    state): the resumed run's own settings, with only the flags of `may_change` taken from the
    command line."""
    args = parser.parse_args(argv)
    apply_job_defaults(args, given_flags(parser, argv))
    automatic = args.resume == "auto"
    if automatic:
        args.resume = automatic_resume(args.work_dir)
    if not args.resume:
        return args, None
    checkpoint = read_checkpoint(args.resume, kind)
    missing = [key for key in TRAINING_STATE_KEYS[kind] if key not in checkpoint]
    if missing:
        raise CheckpointError(f"{args.resume}: not a training checkpoint (no {', '.join(missing)}); resume from a "
                              "run's last.pth (best.pth holds the inference weights only)")
    resume = args.resume
    args = resumed_settings(parser, argv, args, checkpoint.get("args") or {}, may_change)
    args.resume = resume  # the checkpoint's path, also where --resume auto found it
    if args.epochs <= checkpoint["epoch"] and automatic:
        publish_model(args.work_dir)
        raise RunFinished(f"{args.work_dir}: its run has finished its {checkpoint['epoch']} epochs already; "
                          "nothing to do (--epochs N with a larger N trains on)")
    if args.epochs <= checkpoint["epoch"]:
        raise UsageError(f"--epochs {args.epochs}: the run has finished {checkpoint['epoch']} epochs already; "
                         "give a larger --epochs to train longer")
    if automatic:
        print(f"--resume auto: continuing the run in {args.work_dir} from its last.pth ({checkpoint['epoch']} "
              f"epochs done, then {checkpoint.get('next_batch', 0)} batches)")
    return args, checkpoint


def automatic_resume(work_dir: str | None) -> str | None:
    """--resume auto: the run folder's last.pth if it has one, else None (a new run)."""
    if work_dir is None:
        raise UsageError("--resume auto: give --work-dir, the run folder whose last.pth it continues")
    last = Path(work_dir) / "last.pth"
    return str(last) if last.exists() else None


def adopt_architecture(parser: argparse.ArgumentParser, argv: list[str] | None, args: argparse.Namespace,
                       kind: str, flags: dict[str, str]) -> dict | None:
    """With --init-from (and no --resume) the architecture is the checkpoint's: each flag of `flags`
    (its destination: the model config's key) takes the config's value, and one the command line
    gives another value is refused. Returns the checkpoint's model config, or None."""
    if not args.init_from or args.resume:
        return None
    config = read_checkpoint(args.init_from, kind, mmap=True)[CONFIG_KEYS[kind]]
    given = given_flags(parser, argv)
    for dest, key in flags.items():
        if dest in given and getattr(args, dest) != config[key]:
            raise UsageError(f"--{dest.replace('_', '-')} {getattr(args, dest)}: --init-from {args.init_from} "
                             f"has {config[key]}; leave the flag out to take the checkpoint's")
        setattr(args, dest, config[key])
    return config


def begin_run(args: argparse.Namespace, checkpoint: dict | None, kind: str, default_work_dir: str,
              distributed: bool = False) -> tuple[dict | None, int, int, torch.device]:
    """What every set-up begins with: with --resume its checkpoint (read here unless given), the
    seeded random streams, the device (with `distributed`, torchrun's rank and process group), and
    the run folder, chosen on rank 0. Returns the checkpoint, the rank, the world size and the device."""
    if args.resume and checkpoint is None:
        checkpoint = read_checkpoint(args.resume, kind)
    seed_everything(args.seed)
    rank, world_size, device = setup_distributed(args.device) if distributed else (0, 1, pick_device(args.device))
    args.work_dir = broadcast_from_rank0(run_folder(args, default_work_dir) if rank == 0 else None)
    return checkpoint, rank, world_size, device


def run_folder(args: argparse.Namespace, default: str) -> str:
    """The run folder: with --resume the checkpoint's own, or --work-dir when that holds no other
    run (the resumed run's metrics.jsonl comes along); else as run_utils.choose_work_dir."""
    if not args.resume:
        return choose_work_dir(args.work_dir, default, resuming=False)
    source = Path(args.resume).resolve().parent
    target = Path(args.work_dir)
    if target.resolve() == source:
        return choose_work_dir(str(target), default, resuming=True)
    choose_work_dir(str(target), default, resuming=False)  # refused if it holds a run
    records = MetricsLog(source / "metrics.jsonl").read()
    if records:
        target.mkdir(parents=True, exist_ok=True)
        MetricsLog(target / "metrics.jsonl").rewrite(records)
    return str(target)


def loader_settings(args: argparse.Namespace, device: torch.device, collate_fn: Callable) -> dict:
    """What every loader of a run shares: --num-workers worker processes that stay from epoch to
    epoch and leave Ctrl-C to the main process, pinned memory for CUDA, the trainer's `collate_fn`."""
    return dict(num_workers=args.num_workers, persistent_workers=args.num_workers > 0, worker_init_fn=ignore_ctrl_c,
                pin_memory=device.type == "cuda", collate_fn=collate_fn)


def training_loader(dataset: Dataset, args: argparse.Namespace, settings: dict, rank: int = 0,
                    world_size: int = 1) -> DataLoader:
    """This rank's share of every epoch in batches of --batch-size, in the order EpochSampler draws
    from --seed and the epoch; the short last batch is left out."""
    sampler = EpochSampler(len(dataset), args.batch_size, args.seed, rank, world_size)
    return DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, drop_last=True, **settings)


def evaluation_loader(dataset: Dataset, batch_size: int, settings: dict, rank: int = 0,
                      world_size: int = 1) -> DataLoader:
    """This rank's share of an evaluation set, every image once, in order."""
    return DataLoader(dataset, batch_size=batch_size, sampler=range(rank, len(dataset), world_size), **settings)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 on CUDA, fp16 (with a gradient scaler) on GPUs without bf16, full precision elsewhere."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR factor: linear warm-up from 1 % to 100 %, then cosine decay to 1 %."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return 0.01 + 0.99 * step / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
             ) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup_steps, total_steps))


def gradient_scaler(amp_dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """A scaler that is on only for fp16, whose small range needs it."""
    return torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)


@dataclass
class Run:
    """What every run holds: its settings, device, the module being trained and the EMA of its
    weights (`--ema-decay`), the optimiser with its schedule and scaler, and where it stands. A
    trainer subclasses it for its own inference state (`inference_state`)."""
    args: argparse.Namespace
    device: torch.device
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    rank: int = 0
    world_size: int = 1
    best: float = field(init=False)
    metrics: dict | None = None  # the last validation's
    bad_steps: int = 0  # non-finite steps in a row
    total_steps: int = 0  # of the whole run, for the estimate of its cost
    cost_told: bool = False
    ema: torch.nn.Module | None = None  # the weights validated and saved as the model, without --ema-decay 0
    average: WeightAverage | None = field(init=False)
    BEST_KEY: ClassVar[str] = "best"  # the checkpoint entry of the best validation score
    LOWER_IS_BETTER: ClassVar[bool] = True

    def __post_init__(self):
        self.best = math.inf if self.LOWER_IS_BETTER else -math.inf
        self.average = WeightAverage(self.ema, self.model) if self.ema is not None else None

    @classmethod
    def create(cls, args: argparse.Namespace, device: torch.device, model: torch.nn.Module,
               optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, rank: int = 0,
               world_size: int = 1, **own) -> Run:
        """A new run of `model` and `optimizer` on the warm-up + cosine schedule, in the device's mixed
        precision (with a gradient scaler for fp16), with an EMA copy of `model` unless --ema-decay
        is 0; `own` are the trainer's fields of its subclass."""
        amp_dtype = autocast_dtype(device)
        ema = copy.deepcopy(model).requires_grad_(False) if args.ema_decay > 0 else None
        return cls(args, device, model, optimizer, schedule(optimizer, warmup_steps, total_steps),
                   gradient_scaler(amp_dtype), amp_dtype, rank, world_size, total_steps=total_steps, ema=ema,
                   **own)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def work_dir(self) -> Path:
        return Path(self.args.work_dir)

    def log(self, message: str) -> None:
        if self.is_main:
            tqdm.write(message)

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights to validate and save as the model: the EMA's, or the trained ones without it."""
        return self.ema if self.ema is not None else self.model

    def update_average(self) -> None:
        """The EMA's step after a finite optimiser step; its decay ramps up over the first steps
        ((1 + step) / (10 + step)), so the first weights, far from trained, fade quickly."""
        if self.average is not None:
            step = self.scheduler.last_epoch + 1  # batches of the run so far, this one included
            self.average.update(min(self.args.ema_decay, (1 + step) / (10 + step)))

    def improves(self, score: float) -> bool:
        return score < self.best if self.LOWER_IS_BETTER else score > self.best

    def inference_state(self, epoch: int) -> dict:
        """best.pth: what evaluation and prediction need (checkpoints.py lists it per kind)."""
        raise NotImplementedError

    def weights_state(self) -> dict:
        """The trained weights, which last.pth holds besides the inference state's (EMA) weights."""
        return {"train_model": self.model.state_dict()}

    def restore_weights(self, checkpoint: dict) -> None:
        """The trained weights and the EMA's; a checkpoint of a run without an EMA has one set,
        "model" (detector runs made before the detector had an EMA)."""
        self.model.load_state_dict(checkpoint.get("train_model", checkpoint["model"]))
        if self.ema is not None:
            self.ema.load_state_dict(checkpoint["model"])

    def training_state(self, epoch: int, next_batch: int = 0) -> dict:
        """last.pth: the inference state and everything a resume needs. `epoch` is the last finished
        epoch; `next_batch` > 0 means epoch + 1 stopped after that many batches."""
        return {**self.inference_state(epoch), **self.weights_state(), "next_batch": next_batch,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}

    def start(self, checkpoint: dict | None) -> tuple[int, int]:
        """The (epoch, batch) the run begins at: (1, 0), or where a resumed `checkpoint` left it."""
        return (1, 0) if checkpoint is None else self.restore(checkpoint)

    def restore(self, checkpoint: dict) -> tuple[int, int]:
        """Put the run where `checkpoint` left it (weights, optimiser, schedule, random stream, best
        score, metrics.jsonl); returns the epoch and the batch within it to continue from."""
        self.restore_weights(checkpoint)
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        if checkpoint.get("torch_rng") is not None:
            torch.set_rng_state(checkpoint["torch_rng"])
        if checkpoint.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(checkpoint["cuda_rng"])
        self.best, self.metrics = checkpoint[self.BEST_KEY], checkpoint["metrics"]
        epoch, next_batch = checkpoint["epoch"], checkpoint.get("next_batch", 0)
        planned = (checkpoint.get("args") or {}).get("epochs", self.args.epochs)
        if planned != self.args.epochs:  # the schedule's lambda is this run's; its place is the checkpoint's
            factor = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
            self.log(f"--epochs {self.args.epochs}: the run was planned for {planned}, so its warm-up + cosine "
                     f"schedule is stretched to {self.args.epochs} epochs and the learning rate goes from "
                     f"{self.scheduler.get_last_lr()[0]:.2e} to {self.scheduler.base_lrs[0] * factor:.2e} now")
        if self.is_main:
            MetricsLog(self.work_dir / "metrics.jsonl").trim(epoch)
        self.log(f"resumed from {self.args.resume} at epoch {epoch}"
                 + (f" + {next_batch} batches" if next_batch else "") + f" (best {self.best:.3f})")
        return epoch + 1, next_batch


@dataclass
class StepResult:
    """What the loop needs to know of a step: the loss and its terms (averaged over ranks), whether
    it was finite (and so taken), and whether any rank was asked to stop."""
    loss: float
    parts: dict[str, float]
    finite: bool
    stop: bool = False


@torch.no_grad()
def gradient_norm(parameters: list[torch.nn.Parameter]) -> torch.Tensor:
    """L2 norm of all gradients together, as a 0-d tensor on their device (no host sync)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def optimise(run: Run, loss: torch.Tensor, parts: dict[str, torch.Tensor], stop_requested: bool = False,
             max_grad_norm: float | None = None) -> StepResult:
    """Backward and, if the loss and gradient are finite, the optimiser step: one host sync reads
    the loss, the gradient norm and the loss terms `parts`; under DDP every rank takes the same
    decision. `max_grad_norm` clips the gradient first."""
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.unscale_(run.optimizer)
    parameters = [p for group in run.optimizer.param_groups for p in group["params"]]
    norm = (torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm) if max_grad_norm is not None
            else gradient_norm(parameters))
    values = torch.stack([loss.detach().float(), norm.float(), *(p.float() for p in parts.values())]).tolist()
    loss_value, norm_value, *part_values = values
    loss_value, *part_values, stops = sum_across_ranks([loss_value, *part_values, float(stop_requested)], run.device)
    # an fp16 scaler overflows on purpose now and then; it skips those steps itself
    finite = math.isfinite(loss_value) and (run.scaler.is_enabled() or math.isfinite(norm_value))
    if finite:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    n = run.world_size
    return StepResult(loss_value / n, {k: v / n for k, v in zip(parts, part_values)}, finite, stops > 0)


class RunHalted(Exception):
    """Raised inside the loop to stop the run: `run_epochs` saves last.pth at (epoch, next_batch),
    then raises `error` to the user."""

    def __init__(self, error: UserFacingError, epoch: int, next_batch: int):
        super().__init__(str(error))
        self.error, self.epoch, self.next_batch = error, epoch, next_batch


def count_bad_step(run: Run, epoch: int, batch_index: int) -> None:
    """A non-finite step was skipped: warn, and halt after --max-nonfinite-steps in a row."""
    run.bad_steps += 1
    run.log(f"warning: epoch {epoch} batch {batch_index}: non-finite loss or gradient, step skipped")
    if run.bad_steps >= run.args.max_nonfinite_steps:
        raise RunHalted(TrainingStopped(
            f"{run.bad_steps} steps in a row with a non-finite loss or gradient; stopped. "
            f"{run.work_dir / 'last.pth'} holds the last good weights (try a lower --lr)"), epoch - 1, batch_index)


@dataclass
class EpochResult:
    """An epoch of training: its mean losses by name, speed, duration and the images it could not read."""
    losses: dict[str, float]
    images_per_s: float
    seconds: float
    unreadable: list[str]


def duration(seconds: float) -> str:
    """A duration as a person says it: minutes, hours or days."""
    for unit, size in (("days", 86400), ("h", 3600)):
        if seconds >= 2 * size:
            return f"{seconds / size:.1f} {unit}"
    return f"{max(1, round(seconds / 60))} min"


def tell_cost(run: Run, steps_timed: int, seconds: float, batch_images: int) -> None:
    """One line, once a run: what its steps left will cost at the speed of the steps timed so far."""
    rate = steps_timed * batch_images / seconds
    left = (run.total_steps - run.scheduler.last_epoch) * batch_images / rate
    run.log(f"estimated time for the whole run: {duration(left)} ({rate:.1f} images/s on {run.device.type}; "
            "training steps, validation apart)")
    run.cost_told = True


def train_epoch(run: Run, loader: DataLoader, epoch: int, start_batch: int, stop: StopRequest,
                step: Callable[[dict, bool], StepResult | None]) -> EpochResult:
    """Train one epoch, from batch `start_batch` when resuming inside it. `step(batch,
    stop_requested)` is the trainer's optimisation step; it returns None for a batch of which no
    image could be read. Stops the run (too many unreadable images, non-finite steps in a row, a
    stop request) by raising; returns the epoch's mean losses, speed and unreadable images."""
    run.model.train()
    sampler = loader.sampler
    sampler.set_epoch(epoch, start_batch)
    start, sums, steps_done, unreadable = time.time(), {}, 0, []
    timed_from = start  # from the end of the first step, which warms up
    limit = run.args.max_unreadable * sampler.batches_per_epoch * loader.batch_size
    bars = sys.stderr.isatty()  # else one line per PROGRESS_EVERY steps, as a job's log (CloudWatch) reads best
    bar = tqdm(loader, desc=f"epoch {epoch}/{run.args.epochs}", mininterval=1.0, dynamic_ncols=True,
               disable=not run.is_main or not bars)
    for i, batch in enumerate(bar, start=start_batch):
        unreadable += batch["unreadable"]
        if len(unreadable) > limit:
            raise TrainingStopped(f"{len(unreadable)} training images could not be read this epoch "
                                  f"(limit {run.args.max_unreadable:.0%}), e.g. {unreadable[0]}")
        stop_now = stop.signal_name is not None
        result = step(batch, stop_now)
        if result is None and run.world_size > 1:  # the other ranks would wait for this one's gradients
            raise TrainingStopped(f"no image of a batch could be read, e.g. {unreadable[-1]}")
        if result is not None:
            stop_now = result.stop
            if result.finite:
                run.bad_steps, steps_done = 0, steps_done + 1
                for key, value in [("loss", result.loss), *result.parts.items()]:
                    sums[key] = sums.get(key, 0.0) + value
                if steps_done == 1:
                    timed_from = time.time()
                if not run.cost_told and (steps_done == COST_AFTER_STEPS or (
                        steps_done > 1 and i + 1 == sampler.batches_per_epoch)):
                    tell_cost(run, steps_done - 1, time.time() - timed_from, loader.batch_size * run.world_size)
            else:
                count_bad_step(run, epoch, i)
            bar.set_postfix(loss=f"{result.loss:.4f}", lr=f"{run.scheduler.get_last_lr()[0]:.2e}", refresh=False)
            if not bars and (i + 1) % PROGRESS_EVERY == 0:
                run.log(f"epoch {epoch}/{run.args.epochs}, step {i + 1}/{sampler.batches_per_epoch}: loss "
                        f"{result.loss:.4f}, lr {run.scheduler.get_last_lr()[0]:.2e}")
        run.scheduler.step()
        if stop_now:
            raise RunHalted(Interrupted(
                f"{stop.signal_name or 'a stop request'}: saved {run.work_dir / 'last.pth'} at epoch {epoch}, "
                f"batch {i + 1}/{sampler.batches_per_epoch}; continue with "
                f"--resume {run.work_dir / 'last.pth'}"), epoch - 1, i + 1)
    seconds = time.time() - start
    return EpochResult({f"train_{k}": v / max(1, steps_done) for k, v in sums.items()},
                       steps_done * loader.batch_size * run.world_size / seconds, seconds, unreadable)


def finish_epoch(run: Run, epoch: int, trained: EpochResult, score: float, record: dict, summary: str,
                 started: float) -> None:
    """After the trainer validated (`score` and the `record` fields of metrics.jsonl, `summary`
    for the log line): the epoch's metrics.jsonl line, last.pth and, at a new best, best.pth."""
    improved = run.improves(score)
    run.best = score if improved else run.best
    line = {"epoch": epoch, **trained.losses, "lr": run.scheduler.get_last_lr()[0], **record,
            "train_unreadable": len(trained.unreadable), "train_images_per_s": trained.images_per_s,
            "epoch_time_s": time.time() - started}
    if run.is_main:
        MetricsLog(run.work_dir / "metrics.jsonl").append(line)
        save_checkpoint(run.training_state(epoch), run.work_dir / "last.pth")
        if improved:
            save_checkpoint(run.inference_state(epoch), run.work_dir / "best.pth")
            publish_model(run.work_dir)
    skipped = f", {len(trained.unreadable)} unreadable images skipped" if trained.unreadable else ""
    run.log(f"epoch {epoch}: loss {trained.losses.get('train_loss', math.nan):.4f}, {summary} (best {run.best:.3f}), "
            f"{trained.images_per_s:.0f} img/s, {line['epoch_time_s']:.0f} s{skipped}")
    for path in trained.unreadable:
        run.log(f"warning: {path}: cannot read image; skipped")


def run_epochs(run: Run, data, start: tuple[int, int], step: Callable, validate: Callable) -> None:
    """The epoch loop from `start` (epoch, batch): each epoch trains on `data.train_loader` with the
    trainer's `step(run, batch, stop_requested)` and ends with its `validate(run, data, epoch,
    trained, started)`. A stop request (Ctrl-C, SIGTERM) or a halt saves last.pth where the run
    stands and ends in the halt's one-line error."""
    first_epoch, start_batch = start
    try:
        with StopRequest() as stop:
            for epoch in range(first_epoch, run.args.epochs + 1):
                started = time.time()
                trained = train_epoch(run, data.train_loader, epoch, start_batch, stop,
                                      lambda batch, stop_now: step(run, batch, stop_now))
                validate(run, data, epoch, trained, started)
                start_batch = 0
                if sum_across_ranks([float(stop.signal_name is not None)], run.device)[0] > 0:
                    raise RunHalted(Interrupted(
                        f"{stop.signal_name or 'a stop request'}: saved {run.work_dir / 'last.pth'} after epoch "
                        f"{epoch}; continue with --resume {run.work_dir / 'last.pth'}"), epoch, 0)
    except RunHalted as halt:
        if run.is_main:
            save_checkpoint(run.training_state(halt.epoch, halt.next_batch), run.work_dir / "last.pth")
        raise halt.error from None
