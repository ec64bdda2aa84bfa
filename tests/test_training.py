"""training.py, the skeleton every run shares: the warm-up + cosine schedule; a run stopped by
Ctrl-C or killed resumes to the weights of the run nothing interrupted; non-finite
steps and unreadable images are skipped and bounded; --resume continues a run with its own
settings; a run folder never receives another run; the EMA steps towards the trained weights.
The landmark trainer drives it here."""
import argparse
import json
import re
import signal
import subprocess
from collections import namedtuple

import pytest
import torch

import train_simple
import training
from basics import outputs, run_utils
from basics.codec import HeatmapCodec
from basics.dogflw import convert
from conftest import (BROKEN_CHECKPOINTS, SIGNAL_AT_STEP, SMALL_META, SMALL_RUN, make_faces, run_cli, toy_args,
                      write_broken_checkpoint)


def test_the_ema_steps_towards_the_trained_weights_and_both_come_back_from_a_checkpoint():
    model = torch.nn.Linear(3, 2)
    run = training.Run.create(argparse.Namespace(ema_decay=0.5), torch.device("cpu"), model,
                              torch.optim.SGD(model.parameters(), lr=0.1), 0, 10)
    start = model.weight.detach().clone()
    assert run.eval_model is run.ema and torch.equal(run.ema.weight, start)
    with torch.no_grad():
        model.weight.add_(1.0)
    run.update_average()  # the first step: decay min(0.5, 2 / 11), the ramp's
    assert torch.allclose(run.ema.weight, start + 1 - 2 / 11)
    run.scheduler.last_epoch = 99  # far into the run: the flag's decay
    run.update_average()
    assert torch.allclose(run.ema.weight, start + 1 - 2 / 11 * 0.5)
    ema, trained = ({k: torch.full_like(v, value) for k, v in model.state_dict().items()} for value in (3.0, 4.0))
    run.restore_weights({"model": ema, "train_model": trained})
    assert (run.ema.weight == 3).all() and (model.weight == 4).all()
    run.restore_weights({"model": ema})  # a run saved before its trainer had an EMA: one set, both start from it
    assert (run.ema.weight == 3).all() and (model.weight == 3).all()
    plain = training.Run.create(argparse.Namespace(ema_decay=0), torch.device("cpu"), model,
                                torch.optim.SGD(model.parameters(), lr=0.1), 0, 10)
    assert plain.ema is None and plain.eval_model is model


def test_warmup_cosine_rises_linearly_then_decays_to_one_percent():
    factor = training.warmup_cosine(warmup_steps=10, total_steps=110)
    assert factor(0) == pytest.approx(0.01) and factor(10) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.505) and factor(110) == pytest.approx(0.01)


# --- interrupted runs resume exactly, bad steps and bad data never crash a run ---

@pytest.fixture(scope="module")
def uninterrupted(uninterrupted_run):
    """last.pth of the run nothing disturbed."""
    return torch.load(uninterrupted_run / "last.pth", weights_only=False)


def interrupt_in_epoch_2(args: list[str], sig: int) -> subprocess.CompletedProcess:
    """Train on `args` (toy_args: 12 batches an epoch) in a process of its own that receives `sig`
    as its 15th step, the third of epoch 2, begins; returns once it has ended."""
    return run_cli("-c", SIGNAL_AT_STEP, "15", str(int(sig)), *args, check=False)


def assert_same_weights(a: dict, b: dict) -> None:
    for key in ("train_model", "model"):
        if key not in a or key not in b:  # best.pth holds the inference weights only
            continue
        assert a[key].keys() == b[key].keys()
        different = [k for k in a[key] if not torch.equal(a[key][k], b[key][k])]
        assert not different, f"{key}: {len(different)} tensors differ, e.g. {different[0]}"


def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_weights(toy_ann, uninterrupted, tmp_path):
    run = tmp_path / "run"
    killed = interrupt_in_epoch_2(toy_args(toy_ann, run), signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert torch.load(run / "last.pth", weights_only=False)["epoch"] == 1  # epoch 2 was lost
    out = run_cli("train_simple.py", *toy_args(toy_ann, run, "--resume", str(run / "last.pth"))).stdout
    assert "resumed from" in out and "at epoch 1 " in out
    final = torch.load(run / "last.pth", weights_only=False)
    assert final["epoch"] == 3
    assert_same_weights(final, uninterrupted)
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


def test_ctrl_c_saves_last_pth_mid_epoch_and_resume_is_exact(toy_ann, uninterrupted, tmp_path):
    run = tmp_path / "run"
    stopped = interrupt_in_epoch_2(toy_args(toy_ann, run), signal.SIGINT)
    assert stopped.returncode == 130, stopped.stderr
    message = stopped.stderr.strip().splitlines()[-1]
    assert message.startswith("interrupted by SIGINT: saved") and "--resume" in message
    saved = torch.load(run / "last.pth", weights_only=False)
    assert (saved["epoch"], saved["next_batch"] > 0) == (1, True), message  # inside epoch 2
    out = run_cli("train_simple.py", *toy_args(toy_ann, run, "--resume", str(run / "last.pth"))).stdout
    assert f"at epoch 1 + {saved['next_batch']} batches" in out
    assert_same_weights(torch.load(run / "last.pth", weights_only=False), uninterrupted)


def test_resume_alone_continues_the_run_with_its_own_settings(toy_ann, uninterrupted, tmp_path):
    """The exit message says `--resume W/last.pth`: that alone (no data, batch size or pretrained
    flags) continues the run to the weights of the run nothing interrupted."""
    run = tmp_path / "run"
    stopped = interrupt_in_epoch_2(toy_args(toy_ann, run), signal.SIGINT)
    assert stopped.returncode == 130 and f"--resume {run / 'last.pth'}" in stopped.stderr
    out = run_cli("train_simple.py", "--resume", str(run / "last.pth")).stdout
    assert "resumed from" in out and "4 train" not in out
    assert_same_weights(torch.load(run / "last.pth", weights_only=False), uninterrupted)


def test_non_finite_steps_are_skipped_then_the_run_stops_with_good_weights(toy_ann, tmp_path, monkeypatch, capsys):
    real_loss, calls = HeatmapCodec.loss, []

    def loss_turning_nan(*args, **kwargs):
        loss, parts = real_loss(*args, **kwargs)
        calls.append(1)
        # one bad step early (skipped, run goes on), then nothing but bad steps from epoch 2
        return (loss * float("nan"), parts) if len(calls) == 3 or len(calls) > 12 else (loss, parts)
    monkeypatch.setattr(HeatmapCodec, "loss", loss_turning_nan)
    run = tmp_path / "run"
    code = train_simple.main(toy_args(toy_ann, run, "--max-nonfinite-steps", "4"))
    out, err = capsys.readouterr()
    assert code == 1 and "4 steps in a row with a non-finite loss" in err.strip().splitlines()[-1]
    assert out.count("non-finite loss or gradient, step skipped") == 5
    last, best = (torch.load(run / f"{n}.pth", weights_only=False) for n in ("last", "best"))
    assert (last["epoch"], last["next_batch"]) == (1, 3)
    assert all(torch.isfinite(v).all() for v in last["train_model"].values() if v.is_floating_point())
    assert_same_weights(last, best)  # nothing changed since the end of epoch 1


def corrupt(path) -> None:
    path.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    root = make_faces(tmp_path / "toy", {"train": 24, "val": 4}, SMALL_META)
    convert(root, root / "ann", SMALL_META)
    corrupt(root / "train" / "images" / "train_0005.png")
    corrupt(root / "val" / "images" / "val_0001.png")
    run = tmp_path / "run"
    args = ["--ann-root", str(root / "ann"), *SMALL_RUN, "--epochs", "2", "--work-dir", str(run)]
    assert train_simple.main([*args, "--max-unreadable", "0.1"]) == 0
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["train_unreadable"], r["val_unreadable"]) for r in lines] == [(1, 1), (1, 1)]
    assert torch.load(run / "last.pth", weights_only=False)["metrics"]["num_images"] == 3


def test_too_many_unreadable_images_stop_the_run(tmp_path, capsys):
    root = make_faces(tmp_path / "toy", {"train": 24, "val": 4}, SMALL_META)
    convert(root, root / "ann", SMALL_META)
    corrupt(root / "train" / "images" / "train_0005.png")
    code = train_simple.main(["--ann-root", str(root / "ann"), *SMALL_RUN, "--work-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and "1 training images could not be read" in err[-1] and "train_0005.png" in err[-1]


def test_no_space_or_unwritable_run_folder_is_refused_before_training(toy_ann, tmp_path, monkeypatch, capsys):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 5 * 2**20, 5 * 2**20))
    run = tmp_path / "run"
    assert train_simple.main(toy_args(toy_ann, run)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "5 MB free, the checkpoints need about" in err[0]
    assert list(run.iterdir()) == []  # nothing trained, nothing written
    monkeypatch.undo()
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert train_simple.main(toy_args(toy_ann, blocker / "run")) == 1
    assert "a_file/run: lies under a file" in capsys.readouterr().err


@pytest.mark.parametrize("kind", BROKEN_CHECKPOINTS)
def test_broken_resume_checkpoint_gives_one_line(toy_ann, uninterrupted_run, tmp_path, capsys, kind):
    path = write_broken_checkpoint(tmp_path / "last.pth", kind, uninterrupted_run / "last.pth")
    assert train_simple.main(toy_args(toy_ann, tmp_path / "run", "--resume", str(path))) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: ")


# --- resume continues a run with its own settings, and runs never overwrite each other ---

def test_resume_refuses_a_contradicting_flag_and_other_annotations(toy_ann, uninterrupted_run, tmp_path, capsys):
    last = str(uninterrupted_run / "last.pth")
    before = (uninterrupted_run / "last.pth").read_bytes()
    assert train_simple.main(["--resume", last, "--epochs", "4", "--batch-size", "8"]) == 1
    assert capsys.readouterr().err.strip() == (
        "error: --batch-size 8: the run being resumed has 4; --resume continues a run with its own settings "
        "(leave --batch-size out, or start a new run in another --work-dir)")
    assert train_simple.main(["--resume", last, "--epochs", "2"]) == 1
    assert "has finished 3 epochs already" in capsys.readouterr().err
    root = make_faces(tmp_path / "other", {"train": 48, "val": 8}, SMALL_META, seed=5)  # same landmarks
    convert(root, root / "ann", SMALL_META)
    assert train_simple.main(["--resume", last, "--epochs", "4", "--ann-root", str(root / "ann")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not the annotations the run being resumed was trained on" in err[0]
    assert (uninterrupted_run / "last.pth").read_bytes() == before


def test_more_epochs_on_resume_say_what_happens_to_the_schedule(toy_ann, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_simple.main(toy_args(toy_ann, run, "--epochs", "2")) == 0
    assert train_simple.main(["--resume", str(run / "last.pth"), "--epochs", "3"]) == 0
    out = capsys.readouterr().out
    assert "--epochs 3: the run was planned for 2, so its warm-up + cosine schedule is stretched" in out
    assert [r["epoch"] for r in run_utils.MetricsLog(run / "metrics.jsonl").read()] == [1, 2, 3]


def test_a_torn_metrics_line_does_not_stop_a_resume(toy_ann, tmp_path):
    run = tmp_path / "run"
    assert train_simple.main(toy_args(toy_ann, run, "--epochs", "1")) == 0
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "train_loss": 0.5, "val_nm')  # killed during the append
    assert train_simple.main(["--resume", str(run / "last.pth"), "--epochs", "2"]) == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_best_pth_holds_the_inference_weights_only(uninterrupted_run):
    best, last = (torch.load(uninterrupted_run / name, weights_only=True) for name in ("best.pth", "last.pth"))
    assert "optimizer" not in best and "train_model" not in best and "optimizer" in last
    assert (uninterrupted_run / "best.pth").stat().st_size < 0.3 * (uninterrupted_run / "last.pth").stat().st_size


def test_a_second_run_never_overwrites_the_first(toy_ann, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert train_simple.main(toy_args(toy_ann, run, "--epochs", "1")) == 0
    files = {p.name: p.read_bytes() for p in run.iterdir()}
    capsys.readouterr()
    assert train_simple.main(toy_args(toy_ann, run, "--epochs", "1", "--seed", "3")) == 1
    assert capsys.readouterr().err.strip() == (f"error: --work-dir {run}: holds a run already; continue it with "
                                               f"--resume {run / 'last.pth'}, or choose another folder")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == files
    monkeypatch.chdir(tmp_path)  # the default folder is work_dirs/<backbone>_<size> under the current one
    default = ["--ann-root", str(toy_ann), *SMALL_RUN, "--batch-size", "4", "--epochs", "1"]
    assert train_simple.main(default) == 0 and train_simple.main(default) == 0
    assert "work_dirs/resnet18_64 holds an earlier run; this one goes to work_dirs/resnet18_64-2" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "work_dirs").iterdir() if p.is_dir()) == ["resnet18_64", "resnet18_64-2"]


def test_resume_into_a_folder_holding_another_run_is_refused_and_into_a_new_one_carries_the_record(
        toy_ann, uninterrupted_run, tmp_path, capsys):
    other = tmp_path / "other"
    assert train_simple.main(toy_args(toy_ann, other, "--epochs", "1")) == 0
    before = {p.name: p.read_bytes() for p in other.iterdir()}
    capsys.readouterr()
    code = train_simple.main(["--resume", str(uninterrupted_run / "last.pth"), "--epochs", "4", "--work-dir", str(other)])
    assert code == 1 and "holds a run already" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in other.iterdir()} == before  # the other run is untouched
    fresh = tmp_path / "fresh"
    assert train_simple.main(["--resume", str(uninterrupted_run / "last.pth"), "--epochs", "4",
                              "--work-dir", str(fresh)]) == 0
    assert [r["epoch"] for r in run_utils.MetricsLog(fresh / "metrics.jsonl").read()] == [1, 2, 3, 4]
    assert [r["epoch"] for r in run_utils.MetricsLog(uninterrupted_run / "metrics.jsonl").read()] == [1, 2, 3]


def test_durations_read_as_minutes_hours_or_days():
    assert [training.duration(s) for s in (10, 90 * 60, 3 * 3600, 5 * 86400)] == ["1 min", "90 min", "3.0 h",
                                                                                    "5.0 days"]


def test_a_run_says_what_it_will_cost_once_within_its_first_steps(toy_ann, tmp_path, capsys):
    assert train_simple.main(toy_args(toy_ann, tmp_path / "run", "--epochs", "2")) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("estimated time")]
    assert len(lines) == 1, lines
    assert re.fullmatch(r"estimated time for the whole run: \d+ min \([\d.]+ images/s on cpu; "
                        r"training steps, validation apart\)", lines[0])


