"""train_simple.py, the landmark trainer: DogFLW converted, trained, evaluated and resumed from
the command line; its data, optimiser, landmark weights and recipe backbones; torchrun; a
test file scored once; --init-from with the same and with other landmarks."""
import argparse
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import train_simple
from basics.annotation_files import prepare_annotations
from basics.coco_files import DOGFLW_META
from basics.dogflw import convert
from basics.errors import DataError, UsageError
from basics.geometry import apply_affine, box_to_center_size, crop_affine, invert_affine
from basics.metrics import compute_metrics
from conftest import REPO, SMALL_META, SMALL_RUN, make_faces, run_cli, toy_args
from dataset import LandmarkDataset
from model import LandmarkModel, MIRROR_OFFSET_LR_MULT
from tools.benchmark import synthetic_batch


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


def test_keypoint_weights_from_a_file_and_bad_ones_refused(tmp_path):
    meta = {"num_keypoints": 4, "keypoint_weights": None}
    assert torch.equal(train_simple.load_keypoint_weights(None, meta), torch.ones(4))
    path = tmp_path / "w.json"
    path.write_text("[1, 1, 2, 4]")
    assert train_simple.load_keypoint_weights(str(path), meta).tolist() == [0.5, 0.5, 1.0, 2.0]
    path.write_text("[1, 2]")
    with pytest.raises(DataError, match="4 finite numbers"):
        train_simple.load_keypoint_weights(str(path), meta)


def test_resume_against_annotations_with_another_landmark_count_is_refused(
        uninterrupted_run, dogflw_root, tmp_path, capsys):
    convert(dogflw_root, tmp_path / "ann46", DOGFLW_META)
    code = train_simple.main(toy_args(tmp_path / "ann46", tmp_path / "run", "--resume",
                                      str(uninterrupted_run / "last.pth"), "--epochs", "4"))
    assert code == 1 and "predicts 8 landmarks" in capsys.readouterr().err


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


def test_best_pth_is_chosen_on_val_and_the_test_file_scored_once_at_the_end(toy_ann, tmp_path, capsys):
    ann = tmp_path / "ann"
    ann.mkdir()
    for name in ("train", "val"):
        (ann / f"{name}.json").write_bytes((toy_ann / f"{name}.json").read_bytes())
    (ann / "test.json").write_bytes((toy_ann / "val.json").read_bytes())
    assert train_simple.main(toy_args(ann, tmp_path / "run", "--epochs", "1")) == 1  # test.json is val.json here
    assert "photos are in both val and test" in capsys.readouterr().err
    assert train_simple.main(toy_args(ann, tmp_path / "run", "--epochs", "1", "--allow-overlap")) == 0
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
    with pytest.raises(UsageError, match="--backbone hrnet_w32: --init-from .* has resnet18"):
        train_simple.parse_args(toy_args(toy_ann, tmp_path / "x", "--init-from", str(uninterrupted_run / "best.pth"),
                                         "--backbone", "hrnet_w32"))
    assert train_simple.main(toy_args(toy_ann, tmp_path / "trained", "--epochs", "1", "--init-from",
                                      str(uninterrupted_run / "best.pth"))) == 0


def test_hrnet_on_a_cpu_names_the_cpu_route(toy_ann, tmp_path, capsys):
    train_simple.set_up(train_simple.parse_args(
        toy_args(toy_ann, tmp_path / "run", "--backbone", "hrnet_w18_small")), None)
    assert "on a CPU a run takes days. The CPU route: --backbone efficientnet_lite0" in capsys.readouterr().out


def test_photos_in_two_of_train_extra_and_val_are_refused_with_their_count_unless_allowed(tiny_run, tmp_path, capsys):
    ann = tiny_run["ann"]
    args = ["--ann-root", str(ann), "--data-root", str(tiny_run["root"]), "--extra-train", str(ann / "val.json"),
            *SMALL_RUN, "--epochs", "1", "--work-dir", str(tmp_path / "run")]
    assert train_simple.main(args) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: 8 photos are in both --extra-train {ann / 'val.json'} and val (e.g. val/images/val_0000.png; same "
        "file name and size): a photo trained on and scored, or scored twice, makes the score meaningless; remove "
        "them from one file, or give --allow-overlap to train anyway")
    assert not (tmp_path / "run" / "last.pth").exists()
    assert train_simple.main([*args, "--allow-overlap"]) == 0
    assert "warning: 8 photos are in both --extra-train" in capsys.readouterr().out


def test_lite0_takes_its_measured_recipe_where_the_command_line_leaves_it_out():
    lite0 = train_simple.parse_args(["--backbone", "efficientnet_lite0"])
    assert (lite0.input_size, lite0.sigma, lite0.backbone_lr_mult) == (224, 3.0, 1.0)
    given = train_simple.parse_args(["--backbone", "efficientnet_lite0", "--input-size", "160", "--sigma", "2"])
    assert (given.input_size, given.sigma, given.backbone_lr_mult) == (160, 2.0, 1.0)
    hrnet = train_simple.parse_args([])
    assert (hrnet.backbone, hrnet.input_size, hrnet.sigma, hrnet.backbone_lr_mult) == ("hrnet_w32", 256, 2.0, 0.1)


def test_init_from_a_lite0_model_takes_lite0s_recipe_too(uninterrupted_run, tmp_path):
    checkpoint = torch.load(uninterrupted_run / "best.pth", weights_only=False)
    checkpoint["model_config"]["backbone"] = "efficientnet_lite0"  # only its config is read here
    torch.save(checkpoint, tmp_path / "lite0.pth")
    adopted = train_simple.parse_args(["--init-from", str(tmp_path / "lite0.pth")])
    assert (adopted.backbone, adopted.input_size, adopted.sigma, adopted.backbone_lr_mult) == \
        ("efficientnet_lite0", 224, 3.0, 1.0)
    given = train_simple.parse_args(["--init-from", str(tmp_path / "lite0.pth"), "--sigma", "2"])
    assert (given.input_size, given.sigma) == (224, 2.0)
