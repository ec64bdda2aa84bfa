import argparse
import json
import math
import signal
import subprocess
import sys
import time
from collections import namedtuple

import numpy as np
import pytest
import torch

import train_simple
import training
from basics import outputs, run_utils
from basics.annotation_files import prepare_annotations
from basics.coco_files import DOGFLW_META
from basics.codec import HeatmapCodec
from basics.dogflw import convert
from basics.errors import DataError
from basics.geometry import apply_affine, box_to_center_size, crop_affine, invert_affine
from basics.metrics import compute_metrics
from conftest import BROKEN_CHECKPOINTS, REPO, SMALL_META, make_faces, run_cli, write_broken_checkpoint
from dataset import LandmarkDataset
from model import LandmarkModel, MIRROR_OFFSET_LR_MULT
from tools.benchmark import synthetic_batch

SMALL_RUN = ["--backbone", "resnet18", "--input-size", "64", "--no-pretrained", "--batch-size", "8",
             "--num-workers", "0"]


def test_convert_train_evaluate_resume_from_the_command_line(dogflw_root, tmp_path):
    ann, run = tmp_path / "ann", tmp_path / "run"
    run_cli("tools/convert_dogflw_to_coco.py", "--dogflw_root", str(dogflw_root), "--out_dir", str(ann))
    # with a worker process: the run must also exit cleanly (workers ignore Ctrl-C, not SIGTERM)
    out = run_cli("train_simple.py", "--data-root", str(dogflw_root), "--ann-root", str(ann), *SMALL_RUN,
                  "--num-workers", "1", "--epochs", "2", "--work-dir", str(run)).stdout
    assert "best val NME_IOD" in out
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert all(math.isfinite(line["val_nme_iod"]) and line["lr"] > 0 for line in lines)

    best = torch.load(run / "best.pth", weights_only=False)
    assert best["model_config"]["backbone"] == "resnet18" and best["keypoint_meta"]["num_keypoints"] == 46
    held_out = ann / "holdout_0.1" / "val.json"  # DogFLW has train and test: validation is held out of train
    run_cli("evaluate.py", "--checkpoint", str(run / "best.pth"), "--ann", str(held_out),
            "--out", str(run / "eval.json"), "--device", "cpu", "--num-workers", "0")
    evaluated = json.loads((run / "eval.json").read_text())
    assert evaluated["nme_iod"] == pytest.approx(best["metrics"]["nme_iod"], rel=1e-4)
    run_cli("evaluate.py", "--checkpoint", str(run / "best.pth"), "--ann", str(ann / "test.json"),
            "--out", str(run / "test.json"), "--vis", "2", "--device", "cpu", "--num-workers", "0")
    tested = json.loads((run / "test_metrics.json").read_text())  # the test split, scored once at the end
    assert tested["plain"]["nme_iod"] == pytest.approx(json.loads((run / "test.json").read_text())["nme_iod"])
    assert len(list((run / "vis").glob("random_*.png"))) == 2 and (run / "curves.png").stat().st_size > 0

    out = run_cli("train_simple.py", "--resume", str(run / "last.pth"), "--data-root", str(dogflw_root),
                  "--ann-root", str(ann), *SMALL_RUN, "--epochs", "3").stdout
    assert "resumed from" in out and "at epoch 2" in out
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3]
    assert torch.load(run / "last.pth", weights_only=False)["epoch"] == 3


def test_missing_annotations_are_converted_from_the_data_root(dogflw_root, tmp_path):
    files = prepare_annotations(tmp_path / "ann", str(dogflw_root))
    assert files.train.exists() and files.val.name == "test.json"


def test_bad_data_root_gives_one_clear_line(tmp_path):
    result = run_cli("train_simple.py", "--data-root", str(tmp_path / "nowhere"), "--ann-root",
                     str(tmp_path / "ann"), *SMALL_RUN, "--work-dir", str(tmp_path / "run"), check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and "nowhere" in result.stderr


@pytest.mark.parametrize("made", [False, True])
def test_a_mistyped_ann_root_says_what_to_give_and_downloads_nothing(tmp_path, made, monkeypatch):
    typo = tmp_path / "anotations"
    if made:
        typo.mkdir()
    monkeypatch.setattr("basics.annotation_files.download_dogflw", lambda: pytest.fail("a typo must not start a download"))
    with pytest.raises(DataError, match=f"--ann-root {typo}: {'has no train.json' if made else 'no such folder'}; "
                                        "give the folder tools/convert_dogflw_to_coco.py wrote"):
        prepare_annotations(typo, None)


def test_optimizer_rates_and_decay_per_parameter():
    model = LandmarkModel("resnet18", 3)
    args = train_simple.parse_args(["--backbone", "resnet18", "--lr", "0.002"])  # pretrained backbone
    groups = train_simple.build_optimizer(model, args).param_groups
    setting = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert setting[id(model.backbone.conv1.weight)] == (pytest.approx(0.0002), 1e-4)
    assert setting[id(model.head[0].weight)] == (0.002, 1e-4) and setting[id(model.head[1].bias)] == (0.002, 0.0)
    assert setting[id(model.codec.mirror_offset)] == (pytest.approx(0.002 * MIRROR_OFFSET_LR_MULT), 0.0)
    assert len(setting) == len(list(model.parameters()))


def test_ema_and_schedule():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    ema = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    average = train_simple.WeightAverage(ema, model)
    for step in range(2):  # the tensor lists gathered once still follow both models
        with torch.no_grad():
            model[0].weight.fill_(1.0 + step)
            ema[0].weight.fill_(0.0)
            model[1].running_mean.fill_(4.0)
            model[1].num_batches_tracked.fill_(7 + step)
        average.update(decay=0.75)
        assert torch.allclose(ema[0].weight, torch.full_like(ema[0].weight, 0.25 * (1 + step)))
        assert torch.allclose(ema[1].running_mean, torch.full((3,), 1.0 + 0.75 * step))
        assert int(ema[1].num_batches_tracked) == 7 + step
    factor = training.warmup_cosine(warmup_steps=10, total_steps=110)
    assert factor(0) == pytest.approx(0.01) and factor(10) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.505) and factor(110) == pytest.approx(0.01)


def mean_shape_nme(train_set: LandmarkDataset, val_set: LandmarkDataset) -> float:
    """NME_IOD of always predicting the mean training landmarks in crop coordinates."""
    def crop_matrix(record):
        center, size = box_to_center_size(record["box"], train_set.geometry.box_padding)
        return crop_affine(center, size, train_set.geometry.input_size)
    mean_crop = np.mean([apply_affine(r["keypoints"], crop_matrix(r)) for r in train_set.records], axis=0)
    pred = np.stack([apply_affine(mean_crop, invert_affine(crop_matrix(r))) for r in val_set.records])
    gt = np.stack([r["keypoints"] for r in val_set.records])
    return compute_metrics(pred, gt, val_set.meta["iod_pair"])["nme_iod"]


def test_short_training_learns_the_landmarks(tmp_path):
    """On synthetic faces with varying pose, training beats the mean shape by a wide margin."""
    root = make_faces(tmp_path / "toy", {"train": 256, "val": 64}, SMALL_META, rotation=40.0)
    convert(root, root / "ann", SMALL_META)
    run = tmp_path / "run"
    best_nme = train_simple.train(train_simple.parse_args([
        "--ann-root", str(root / "ann"), *SMALL_RUN, "--batch-size", "16", "--epochs", "8",
        "--lr", "2e-3", "--work-dir", str(run)]))
    baseline = mean_shape_nme(LandmarkDataset(root / "ann" / "train.json", None, 64),
                              LandmarkDataset(root / "ann" / "val.json", None, 64))
    print(f"val NME_IOD {best_nme:.2f} vs mean shape {baseline:.2f}")
    assert baseline > 15
    assert best_nme < 0.25 * baseline


# --- reliability: interrupted runs resume exactly, bad steps and bad data never crash a run ---

@pytest.fixture(scope="module")
def toy_ann(tmp_path_factory):
    """48 training faces (12 batches of 4 per epoch) and 8 validation faces, 8 landmarks."""
    root = make_faces(tmp_path_factory.mktemp("toy"), {"train": 48, "val": 8}, SMALL_META)
    convert(root, root / "ann", SMALL_META)
    return root / "ann"


def toy_args(ann, run, *extra: str) -> list[str]:
    return ["--ann-root", str(ann), *SMALL_RUN, "--batch-size", "4", "--epochs", "3", "--work-dir", str(run), *extra]


@pytest.fixture(scope="module")
def uninterrupted_run(toy_ann, tmp_path_factory):
    """The folder of a 3-epoch run that nothing disturbed."""
    run = tmp_path_factory.mktemp("uninterrupted")
    run_cli("train_simple.py", *toy_args(toy_ann, run))
    return run


@pytest.fixture(scope="module")
def uninterrupted(uninterrupted_run):
    """last.pth of that run."""
    return torch.load(uninterrupted_run / "last.pth", weights_only=False)


def interrupt_in_epoch_2(args: list[str], run, sig: int) -> subprocess.CompletedProcess:
    """Start a training process, send `sig` early in its second epoch, wait for it to end."""
    process = subprocess.Popen([sys.executable, "train_simple.py", *args], cwd=REPO, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (run / "best.pth").exists():  # written last, after epoch 1
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.02)
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    time.sleep(12 * 4 / first["train_images_per_s"] / 4)  # a quarter into epoch 2 (epoch 1 ran warm-up too)
    process.send_signal(sig)
    out, err = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def assert_same_weights(a: dict, b: dict) -> None:
    for key in ("train_model", "model"):
        if key not in a or key not in b:  # best.pth holds the inference weights only
            continue
        assert a[key].keys() == b[key].keys()
        different = [k for k in a[key] if not torch.equal(a[key][k], b[key][k])]
        assert not different, f"{key}: {len(different)} tensors differ, e.g. {different[0]}"


def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_weights(toy_ann, uninterrupted, tmp_path):
    run = tmp_path / "run"
    killed = interrupt_in_epoch_2(toy_args(toy_ann, run), run, signal.SIGKILL)
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
    stopped = interrupt_in_epoch_2(toy_args(toy_ann, run), run, signal.SIGINT)
    assert stopped.returncode == 130, stopped.stderr
    message = stopped.stderr.strip().splitlines()[-1]
    assert message.startswith("interrupted by SIGINT: saved") and "--resume" in message
    saved = torch.load(run / "last.pth", weights_only=False)
    assert (saved["epoch"], saved["next_batch"] > 0) == (1, True), message  # inside epoch 2
    out = run_cli("train_simple.py", *toy_args(toy_ann, run, "--resume", str(run / "last.pth"))).stdout
    assert f"at epoch 1 + {saved['next_batch']} batches" in out
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


def test_resume_against_annotations_with_another_landmark_count_is_refused(
        uninterrupted_run, dogflw_root, tmp_path, capsys):
    convert(dogflw_root, tmp_path / "ann46", DOGFLW_META)
    code = train_simple.main(toy_args(tmp_path / "ann46", tmp_path / "run", "--resume",
                                      str(uninterrupted_run / "last.pth"), "--epochs", "4"))
    assert code == 1 and "predicts 8 landmarks" in capsys.readouterr().err


def test_keypoint_weights_from_a_file_and_bad_ones_refused(tmp_path):
    meta = {"num_keypoints": 4, "keypoint_weights": None}
    assert torch.equal(train_simple.load_keypoint_weights(None, meta), torch.ones(4))
    path = tmp_path / "w.json"
    path.write_text("[1, 1, 2, 4]")
    assert train_simple.load_keypoint_weights(str(path), meta).tolist() == [0.5, 0.5, 1.0, 2.0]
    path.write_text("[1, 2]")
    with pytest.raises(train_simple.DataError, match="4 finite numbers"):
        train_simple.load_keypoint_weights(str(path), meta)


def test_torchrun_with_two_cpu_processes(toy_ann, tmp_path):
    """DDP over gloo: one set of files from rank 0, and the validation metric it logged equals a
    single-process evaluation of the checkpoint (so the ranks' shares of the val set were combined)."""
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train_simple.py",
         *toy_args(toy_ann, run, "--epochs", "1")], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "x 2 processes" in result.stdout and result.stdout.count("best val NME_IOD") == 1
    assert sorted(p.name for p in run.iterdir()) == ["best.pth", "curves.png", "last.pth", "metrics.jsonl"]
    (record,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    checkpoint = torch.load(run / "last.pth", weights_only=False)
    assert checkpoint["scheduler"]["last_epoch"] == 48 // (4 * 2)  # each rank took half the batches
    import evaluate
    out = tmp_path / "metrics.json"
    assert evaluate.main(["--checkpoint", str(run / "best.pth"), "--ann", str(toy_ann / "val.json"),
                          "--device", "cpu", "--num-workers", "0", "--out", str(out)]) == 0
    single = json.loads(out.read_text())
    assert single["num_images"] == 8 and single["nme_iod"] == pytest.approx(record["val_nme_iod"], rel=1e-5)


def test_unknown_backbone_is_one_line_and_exit_1(toy_ann, tmp_path, capsys):
    assert train_simple.main(toy_args(toy_ann, tmp_path / "run", "--backbone", "nosuchmodel")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: backbone 'nosuchmodel' is not a timm model name (e.g. hrnet_w32, tf_efficientnetv2_s, "
                   "resnet18)"]


# --- the documented recovery path, and runs that never overwrite each other ---

def test_resume_alone_continues_the_run_with_its_own_settings(toy_ann, uninterrupted, tmp_path):
    """The exit message says `--resume W/last.pth`: that alone (no data, batch size or pretrained
    flags) continues the run to the weights of the run nothing interrupted."""
    run = tmp_path / "run"
    stopped = interrupt_in_epoch_2(toy_args(toy_ann, run), run, signal.SIGINT)
    assert stopped.returncode == 130 and f"--resume {run / 'last.pth'}" in stopped.stderr
    out = run_cli("train_simple.py", "--resume", str(run / "last.pth")).stdout
    assert "resumed from" in out and "4 train" not in out
    assert_same_weights(torch.load(run / "last.pth", weights_only=False), uninterrupted)


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
    assert sorted(p.name for p in (tmp_path / "work_dirs").iterdir()) == ["resnet18_64", "resnet18_64-2"]


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


def test_what_can_be_checked_is_checked_before_training(toy_ann, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_simple.main(toy_args(toy_ann, tmp_path / "run", "--epochs", "0"))
    assert exit_info.value.code == 2 and "--epochs: 0 is out of range: must be >= 1" in capsys.readouterr().err
    coco = json.loads((toy_ann / "val.json").read_text())
    for annotation in coco["annotations"]:
        annotation["keypoints"][3:6] = annotation["keypoints"][0:3]  # both eye corners in one place
    ann = tmp_path / "ann"
    ann.mkdir()
    (ann / "train.json").write_bytes((toy_ann / "train.json").read_bytes())
    (ann / "val.json").write_text(json.dumps(coco))
    assert train_simple.main(toy_args(ann, tmp_path / "run")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "val.json: no image has a usable inter-ocular distance" in err[0]
    assert not (tmp_path / "run").exists() and not (ann / "crop_cache").exists()  # before the cache was built


def test_ctrl_c_while_the_crop_cache_is_built_is_one_line_and_exit_130(toy_ann, tmp_path, capsys, monkeypatch):
    def ctrl_c(path):
        raise KeyboardInterrupt
    monkeypatch.setattr("basics.crop_cache.read_image", ctrl_c)
    assert train_simple.main(toy_args(toy_ann, tmp_path / "run", "--crop-cache", str(tmp_path / "cache"))) == 130
    assert capsys.readouterr().err.strip().splitlines() == ["interrupted by Ctrl-C"]
    assert list((tmp_path / "cache").iterdir()) == []


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        train_simple.main(["--help"])
    out = capsys.readouterr().out
    assert "(default: 210)" in out and "(default: hrnet_w32)" in out and "(default: 1.25)" in out


@pytest.mark.parametrize("backbone", ["hrnet_w32", "tf_efficientnetv2_s"])
@pytest.mark.parametrize("recipe_flags", [[], ["--heatmap-stride", "2", "--sigma", "4"]])
def test_the_recipe_trains_the_full_backbones_at_256_with_dogflws_46_landmarks(backbone, recipe_flags):
    torch.manual_seed(0)
    args = train_simple.parse_args(["--backbone", backbone, "--no-pretrained", *recipe_flags])
    assert args.input_size == 256
    model = train_simple.create_model(args, 46, checkpoint=None)
    run = train_simple.build_run(args, model, {"num_keypoints": 46}, torch.ones(46), steps_per_epoch=2,
                                 device=torch.device("cpu"))
    batch = synthetic_batch(argparse.Namespace(batch_size=2, input_size=256, num_keypoints=46))
    before = [p.detach().clone() for p in model.parameters()]
    results = [train_simple.train_step(run, batch) for _ in range(2)]
    assert all(result.finite and math.isfinite(result.loss) for result in results)
    assert sum(not torch.equal(a, b) for a, b in zip(before, model.parameters())) > len(before) // 2
    stride = 2 if "--heatmap-stride" in recipe_flags else 4
    with torch.no_grad():
        assert model.eval()(batch["image"].float()).shape == (2, 46, 256 // stride, 256 // stride)


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


def test_best_pth_is_chosen_on_val_and_the_test_file_scored_once_at_the_end(toy_ann, tmp_path, capsys):
    ann = tmp_path / "ann"
    ann.mkdir()
    for name in ("train", "val"):
        (ann / f"{name}.json").write_bytes((toy_ann / f"{name}.json").read_bytes())
    (ann / "test.json").write_bytes((toy_ann / "val.json").read_bytes())
    assert train_simple.main(toy_args(ann, tmp_path / "run", "--epochs", "1")) == 0
    out = capsys.readouterr().out
    assert f"test NME_IOD of best.pth (chosen on {ann / 'val.json'})" in out
    assert json.loads((tmp_path / "run" / "test_metrics.json").read_text())["ann"] == str(ann / "test.json")
    (ann / "val.json").unlink()  # train and test only, as DogFLW: --val-fraction 0 selects on the test file
    assert train_simple.main(toy_args(ann, tmp_path / "on_test", "--epochs", "1", "--val-fraction", "0")) == 0
    assert "train / 8 val images" in capsys.readouterr().out and not (tmp_path / "on_test" / "test_metrics.json").exists()


def test_init_from_a_checkpoint_takes_its_weights_with_the_same_and_with_other_landmarks(
        toy_ann, uninterrupted_run, dogflw_root, tmp_path, capsys):
    source = torch.load(uninterrupted_run / "best.pth", weights_only=False)["model"]
    args = train_simple.parse_args(toy_args(toy_ann, tmp_path / "same", "--init-from",
                                            str(uninterrupted_run / "best.pth")))
    same = train_simple.create_model(args, 8, checkpoint=None)
    assert all(torch.equal(value, source[name]) for name, value in same.state_dict().items())
    convert(dogflw_root, tmp_path / "ann46", DOGFLW_META)
    args = train_simple.parse_args(["--ann-root", str(tmp_path / "ann46"), "--init-from",
                                    str(uninterrupted_run / "best.pth"), "--input-size", "64"])
    assert args.backbone == "resnet18"  # the architecture is the checkpoint's
    other = train_simple.create_model(args, 46, checkpoint=None)
    state = other.state_dict()
    assert "8 landmarks there, 46 here: new codec, head.6" in capsys.readouterr().out
    assert all(torch.equal(state[name], value) for name, value in source.items() if name.startswith("backbone."))
    assert state["head.6.weight"].shape[0] == 46 and torch.equal(state["head.0.weight"], source["head.0.weight"])
    with pytest.raises(train_simple.UsageError, match="--backbone hrnet_w32: --init-from .* has resnet18"):
        train_simple.parse_args(toy_args(toy_ann, tmp_path / "x", "--init-from", str(uninterrupted_run / "best.pth"),
                                         "--backbone", "hrnet_w32"))
    assert train_simple.main(toy_args(toy_ann, tmp_path / "trained", "--epochs", "1", "--init-from",
                                      str(uninterrupted_run / "best.pth"))) == 0
