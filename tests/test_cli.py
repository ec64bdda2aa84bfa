"""Every user mistake on every script's command line is one line and a non-zero exit, never a
traceback: numbers out of range, devices that are not there, paths of the wrong kind."""
import pytest
import torch

import evaluate
import train_simple
from tools import benchmark, convert_dogflw_to_coco, export_onnx, predict, train_detector

TRAIN = ["--backbone", "resnet18", "--input-size", "64", "--no-pretrained", "--batch-size", "4", "--num-workers", "0",
         "--epochs", "1"]
BAD_NUMBERS = {
    train_simple: ["--batch-size 0", "--batch-size -1", "--batch-size x", "--num-workers -1", "--input-size 0",
                   "--input-size 100", "--box-padding 0", "--box-padding -1", "--epochs 0", "--epochs -2", "--lr 0",
                   "--sigma 0", "--ema-decay 1", "--neck-channels 0", "--aug-flip-prob 2", "--aug-scale 1",
                   "--aug-rotation -5", "--max-unreadable 1.5", "--max-nonfinite-steps 0", "--warmup-epochs -1",
                   "--weight-decay -1", "--seed 1.5", "--lr nan", "--heatmap-loss-weight 0 --coord-loss-weight 0"],
    evaluate: ["--batch-size 0", "--num-workers -1", "--vis -1"],
    predict: ["--batch-size 0", "--batch-size 2.5", "--score-threshold 1.5", "--detect-every 0", "--smooth -1",
              "--region-size 0"],
    train_detector: ["--epochs 0", "--batch-size 0", "--lr 0", "--min-size 100", "--max-size 0", "--num-workers -1",
                     "--weight-decay -1", "--model yolo"],
    export_onnx: ["--opset 0", "--check-batch 0"],
    benchmark: ["--batch-size 0", "--input-size 0", "--input-size 200", "--steps 0", "--warmup -1", "--repeats 0",
                "--num-keypoints 0", "--num-workers -1"],
}
BAD_PATHS = {  # FILE: an existing plain file, DIR: an existing folder, MISSING: nothing there
    train_simple: ["--work-dir FILE", "--work-dir FILE/run", "--resume MISSING", "--resume DIR", "--resume FILE",
                   "--meta MISSING", "--keypoint-weights MISSING", "--pretrained-path MISSING",
                   "--crop-cache FILE", "--ann-root MISSING --data-root MISSING", "--ann-root FILE --data-root DIR",
                   "--backbone nosuchnet", "--device gpu", "--device cuda", "--device cuda:3"],
    evaluate: ["--checkpoint MISSING", "--checkpoint DIR", "--checkpoint FILE", "--ann MISSING", "--ann DIR",
               "--detector MISSING", "--detector CHECKPOINT", "--score-threshold -0.1",
               "--ann FILE", "--out DIR", "--out FILE/m.json", "--vis 1 --vis-dir FILE", "--meta MISSING",
               "--data-root MISSING", "--device gpu", "--device cuda"],
    predict: ["--checkpoint MISSING", "--checkpoint DIR", "--out FILE", "--out FILE/sub", "--device cuda",
              "--boxes MISSING", "--boxes DIR", "--detector MISSING", "--detector FILE", "--detector CHECKPOINT"],
    train_detector: ["--work-dir FILE", "--work-dir FILE/run", "--resume MISSING", "--resume CHECKPOINT",
                     "--ann-root MISSING --data-root MISSING", "--device gpu", "--device cuda"],
    export_onnx: ["--checkpoint MISSING", "--out DIR", "--out FILE/m.onnx", "--out CHECKPOINT"],
    benchmark: ["--ann MISSING", "--ann DIR", "--device gpu", "--device cuda"],
    convert_dogflw_to_coco: ["--dogflw_root MISSING", "--dogflw_root FILE", "--out_dir FILE", "--out_dir FILE/ann",
                             "--meta MISSING", "--meta FILE", ""],
}


def base_args(script, tiny_run, tmp_path) -> list[str]:
    """A command line of `script` that works, for a mistake to be added to."""
    out = str(tmp_path / "out")
    return {
        train_simple: ["--ann-root", str(tiny_run["ann"]), *TRAIN, "--work-dir", str(tmp_path / "run")],
        evaluate: ["--checkpoint", str(tiny_run["checkpoint"]), "--ann", str(tiny_run["ann"] / "val.json"),
                   "--num-workers", "0", "--device", "cpu"],
        predict: [str(tiny_run["root"] / "val" / "images"), "--checkpoint", str(tiny_run["checkpoint"]), "--out", out],
        export_onnx: ["--checkpoint", str(tiny_run["checkpoint"]), "--out", str(tmp_path / "m.onnx")],
        benchmark: ["--backbone", "resnet18", "--input-size", "64", "--batch-size", "2", "--steps", "1",
                    "--warmup", "0", "--repeats", "1", "--device", "cpu"],
        convert_dogflw_to_coco: ["--dogflw_root", str(tiny_run["root"]), "--out_dir", out],
        train_detector: ["--ann-root", str(tiny_run["ann"]), "--no-pretrained", "--epochs", "1", "--batch-size", "4",
                         "--num-workers", "0", "--min-size", "64", "--max-size", "96", "--work-dir", str(tmp_path / "d")],
    }[script]


def with_mistake(args: list[str], mistake: str, paths: dict[str, str]) -> list[str]:
    """`args` with the flags of `mistake` set to it (replacing their earlier values)."""
    words = [paths.get(w.split("/")[0], w.split("/")[0]) + w[len(w.split("/")[0]):] for w in mistake.split()]
    flags = {w for w in words if w.startswith("--")}
    kept, skip = [], False
    for word in args:
        if skip:
            skip = False
            continue
        if word in flags:
            skip = True
            continue
        kept.append(word)
    return kept + words


def run_main(script, args: list[str], capsys) -> tuple[int, list[str]]:
    try:
        code = script.main(args)
    except SystemExit as exit_info:  # argparse's refusal
        code = exit_info.code
    return code, capsys.readouterr().err.strip().splitlines()


CASES = [(script, mistake) for table in (BAD_NUMBERS, BAD_PATHS) for script, mistakes in table.items()
         for mistake in mistakes]


@pytest.mark.parametrize("script, mistake", CASES, ids=[f"{s.__name__.split('.')[-1]}:{m or 'no root'}"
                                                        for s, m in CASES])
def test_a_mistake_is_one_line_and_a_non_zero_exit(script, mistake, tiny_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # CI has no GPU; a GPU machine must agree
    paths = {"FILE": str(tmp_path / "a_file"), "DIR": str(tmp_path / "a_folder"), "MISSING": str(tmp_path / "none"),
             "CHECKPOINT": str(tiny_run["checkpoint"])}
    (tmp_path / "a_file").write_text("not what was asked for")
    (tmp_path / "a_folder").mkdir()
    args = with_mistake(base_args(script, tiny_run, tmp_path), mistake, paths)
    if script is convert_dogflw_to_coco and not mistake:
        args = args[2:]  # neither --dogflw_root nor --download
    code, err = run_main(script, args, capsys)
    assert code not in (0, None), (args, err)
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1 and err[-1] == errors[0], err
    assert not any("Traceback" in line for line in err)
