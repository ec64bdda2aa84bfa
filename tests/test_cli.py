"""Every user mistake on every script's command line is one line and a non-zero exit, never a
traceback: numbers out of range, devices that are not there, paths of the wrong kind."""

import subprocess
import sys

import pytest
import torch

import evaluate
import train_simple
from basics.cli import CommandLineParser
from conftest import REPO
from tools import benchmark, convert_dogflw_to_coco, export_onnx, label_video, predict, train_detector

TRAIN = ["--backbone", "resnet18", "--input-size", "64", "--no-pretrained", "--batch-size", "4", "--num-workers", "0",
         "--epochs", "1"]
BAD_NUMBERS = {
    train_simple: ["--batch-size 0", "--batch-size -1", "--batch-size x", "--num-workers -1", "--input-size 0",
                   "--input-size 100", "--box-padding 0", "--box-padding -1", "--epochs 0", "--epochs -2", "--lr 0",
                   "--sigma 0", "--ema-decay 1", "--neck-channels 0", "--aug-flip-prob 2", "--aug-scale 1",
                   "--aug-rotation -5", "--max-unreadable 1.5", "--max-nonfinite-steps 0", "--warmup-epochs -1",
                   "--weight-decay -1", "--seed 1.5", "--lr nan", "--heatmap-loss-weight 0 --coord-loss-weight 0",
                   "--seed -5", "--seed 4294967296", "--input-size 1000000000032", "--val-fraction 0.9"],
    evaluate: ["--batch-size 0", "--num-workers -1", "--vis -1"],
    predict: ["--batch-size 0", "--batch-size 2.5", "--score-threshold 1.5", "--detect-every 0", "--region-size 0",
              "--filter-window 4", "--filter-max-gap -1", "--pcutoff 2"],
    train_detector: ["--epochs 0", "--batch-size 0", "--lr 0", "--min-size 100", "--max-size 0", "--num-workers -1",
                     "--weight-decay -1", "--model yolo", "--seed -5", "--seed 4294967296",
                     "--min-size 416 --max-size 320", "--face-small 0.9 --face-large 0.2", "--mosaic-prob 2"],
    export_onnx: ["--opset 0", "--check-batch 0"],
    label_video: ["--pcutoff -1", "--fps 0"],
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
              "--boxes MISSING", "--boxes DIR", "--detector MISSING", "--detector FILE", "--detector CHECKPOINT",
              "--bbox 1,2,3", "--bbox 1e300,0,2e300,5"],
    label_video: ["--out FILE/x.mp4", "--out DIR", "--out x.avi"],
    train_detector: ["--work-dir FILE", "--work-dir FILE/run", "--resume MISSING", "--resume CHECKPOINT",
                     "--ann-root MISSING --data-root MISSING", "--device gpu", "--device cuda"],
    export_onnx: ["--checkpoint MISSING", "--out DIR", "--out FILE/m.onnx", "--out CHECKPOINT"],
    benchmark: ["--ann MISSING", "--ann DIR", "--device gpu", "--device cuda"],
    convert_dogflw_to_coco: ["--dogflw_root MISSING", "--dogflw_root FILE", "--out_dir FILE", "--out_dir FILE/ann",
                             "--meta MISSING", "--meta FILE", "", "--coco MISSING", "--coco FILE",
                             "--coco FILE --images MISSING", "--split ../x"],
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
        label_video: [str(tmp_path / "none.mp4"), str(tmp_path / "none.csv")],
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
    if script is convert_dogflw_to_coco and (not mistake or mistake.startswith("--coco")):
        args = args[2:]  # neither --dogflw_root nor --download (nor, with --coco, two sources)
    code, err = run_main(script, args, capsys)
    assert code not in (0, None), (args, err)
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1 and err[-1] == errors[0], err
    assert not any("Traceback" in line for line in err)


SCRIPTS = (train_simple, train_detector, evaluate, predict, export_onnx, benchmark, convert_dogflw_to_coco, label_video)
REQUIRED = {evaluate: ["--checkpoint", "c.pth", "--ann", "a.json"], predict: ["x.png", "--checkpoint", "c.pth", "--out", "o"],
            export_onnx: ["--checkpoint", "c.pth", "--out", "m.onnx"], label_video: ["v.mp4", "t.csv"]}
EXTREMES = ("-1e300", "1e300", "-1000000000000000000000", "1000000000000000000000", "nan", "inf", "-inf")


def numeric_flags(script) -> list[str]:
    """Every flag of the script's parser that takes a number."""
    parser = script.build_parser()
    return [action.option_strings[0] for action in parser._actions if action.option_strings and action.type is not None
            and getattr(action.type, "__name__", "") in ("int", "float", "multiple_of_32")]


SWEEP = [(script, flag, value) for script in SCRIPTS for flag in numeric_flags(script) for value in EXTREMES]


def test_every_script_has_numeric_flags_to_sweep():
    assert {script for script, _, _ in SWEEP} == set(SCRIPTS) - {convert_dogflw_to_coco}  # it takes no number
    assert len(SWEEP) > 300


@pytest.mark.parametrize("script, flag, value", SWEEP, ids=[f"{s.__name__.split('.')[-1]}:{f}={v}" for s, f, v in SWEEP])
def test_every_number_flag_refuses_its_extremes_in_one_line(script, flag, value, capsys):
    with pytest.raises(SystemExit) as refused:
        script.build_parser().parse_args([*REQUIRED.get(script, []), f"{flag}={value}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert refused.value.code == 2 and len(err) == 1 and flag in err[0], err


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "tools").glob("[!_]*.py")))
def test_every_tools_script_runs_as_a_file_from_the_repository_root(script):
    result = subprocess.run([sys.executable, f"tools/{script}", "--help"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0 and "usage:" in result.stdout, result.stderr


def test_on_off_flags_take_sagemakers_true_and_false_and_never_a_file_name_that_follows():
    parser = CommandLineParser(on_off_values=True)
    parser.add_argument("--no-pretrained", action="store_true")
    parser.add_argument("files", nargs="*")
    cases = {("--no-pretrained", "True"): True, ("--no-pretrained", "false"): False, ("--no-pretrained=1",): True,
             ("--no-pretrained",): True, (): False}
    for argv, value in cases.items():
        assert parser.parse_args(list(argv)).no_pretrained is value
    assert vars(parser.parse_args(["--no-pretrained", "x.json"])) == {"no_pretrained": True, "files": ["x.json"]}
    with pytest.raises(SystemExit):
        parser.parse_args(["--no-pretrained=maybe"])
