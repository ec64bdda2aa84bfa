"""tools/convert_dogflw_to_coco.py: what it writes never replaces a user's file unasked, nor its input."""

import json

from conftest import SMALL_META, make_faces
from tools import convert_dogflw_to_coco


def test_a_corrected_annotation_file_is_replaced_only_with_overwrite(tmp_path, small_meta_file, capsys):
    root = make_faces(tmp_path / "faces", {"train": 4, "val": 2}, SMALL_META, image_size=64)
    ann = tmp_path / "ann"
    ann.mkdir()
    (ann / "train.json").write_text('{"corrected": "by hand"}')
    args = ["--dogflw-root", str(root), "--meta", str(small_meta_file), "--out-dir", str(ann)]
    assert convert_dogflw_to_coco.main(args) == 1
    assert capsys.readouterr().err.strip() == (f"error: --out-dir's train.json {ann / 'train.json'}: exists; give "
                                               "--overwrite to replace it, or write elsewhere")
    assert json.loads((ann / "train.json").read_text()) == {"corrected": "by hand"}
    assert sorted(p.name for p in ann.iterdir()) == ["train.json"]  # val.json not written either
    assert convert_dogflw_to_coco.main([*args, "--overwrite"]) == 0
    assert len(json.loads((ann / "train.json").read_text())["images"]) == 4


def test_a_coco_export_is_never_written_over_itself(tmp_path, small_meta_file, capsys):
    export = tmp_path / "train.json"
    export.write_text('{"images": []}')
    args = ["--coco", str(export), "--out-dir", str(tmp_path), "--split", "train", "--meta", str(small_meta_file),
            "--overwrite"]
    assert convert_dogflw_to_coco.main(args) == 1
    assert "is --coco, which this command reads" in capsys.readouterr().err
    assert export.read_text() == '{"images": []}'
