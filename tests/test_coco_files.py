"""COCO keypoint files and keypoint metadata: what is read, and what is refused in one line."""

import json

import pytest

from basics.coco_files import DOGFLW_META, held_out_ids, load_coco, merge_coco, read_meta_file, validate_keypoint_meta
from basics.errors import DataError
from conftest import SMALL_META, coco_copy


def test_load_coco_reads_records_and_meta(toy_train_json):
    coco = load_coco(toy_train_json)
    records, meta, data_root = coco.records, coco.meta, coco.data_root
    assert len(records) == 6 and meta["num_keypoints"] == 8 and meta["iod_pair"] == [0, 1]
    assert records[0]["keypoints"].shape == (8, 2) and records[0]["box"].shape == (4,)
    assert data_root == str(toy_train_json.parents[1].resolve())


@pytest.mark.parametrize("change, message", [
    ({"flip_index": [0, 0, 3, 2, 4, 6, 5, 7]}, "not a permutation"),
    ({"flip_index": [1, 2, 0, 3, 4, 6, 5, 7]}, "own inverse"),
    ({"iod_pair": [0, 8]}, "iod_pair"),
])
def test_bad_keypoint_meta_is_refused(change, message):
    meta = {**SMALL_META, **change}
    with pytest.raises(DataError, match=message):
        validate_keypoint_meta(meta, "meta.json")


def test_unusable_annotation_file_names_itself(tmp_path):
    bad = tmp_path / "train.json"
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match=str(bad)):
        load_coco(bad)


@pytest.mark.parametrize("change, message", [
    (lambda coco: coco["annotations"][2]["keypoints"].__setitem__(4, float("nan")), "train_0002.png: keypoint 1 is NaN"),
    (lambda coco: coco["annotations"][2]["keypoints"].__setitem__(0, float("inf")), "train_0002.png: keypoint 0 is NaN"),
    (lambda coco: coco["annotations"][3]["bbox"].__setitem__(2, 0), "train_0003.png: face box"),
    (lambda coco: coco["annotations"][3]["bbox"].__setitem__(3, -5), "train_0003.png: face box"),
])
def test_non_finite_keypoints_and_empty_boxes_are_refused_naming_the_image(toy_train_json, tmp_path, change, message):
    path = coco_copy(toy_train_json, tmp_path, change)
    with pytest.raises(DataError, match=f"{path}: image train/images/{message}"):
        load_coco(path)


def test_a_foreign_coco_file_says_which_fields_to_add_and_takes_them_from_meta(toy_train_json, tmp_path):
    def strip(coco):
        for field in ("flip_index", "iod_pair"):
            del coco["categories"][0][field]
    path = coco_copy(toy_train_json, tmp_path, strip)
    with pytest.raises(DataError, match="no flip_index .* iod_pair .* or pass --meta FILE"):
        load_coco(path)
    meta_file = tmp_path / "meta.json"
    meta_file.write_text(json.dumps(SMALL_META))
    coco = load_coco(path, read_meta_file(meta_file))
    records, meta = coco.records, coco.meta
    assert meta["flip_index"] == SMALL_META["flip_index"] and meta["iod_pair"] == [0, 1] and len(records) == 6


def test_dogflws_flip_map_is_a_mirror_and_its_regions_cover_every_landmark():
    flip = DOGFLW_META["flip_index"]
    assert sorted(flip) == list(range(46)) and all(flip[flip[i]] == i for i in range(46))
    assert sorted(i for r in DOGFLW_META["regions"].values() for i in r) == list(range(46))
    validate_keypoint_meta(DOGFLW_META, "DOGFLW_META")


def test_the_held_out_validation_share_is_seeded_and_taken_from_every_breed():
    images = [{"id": n, "file_name": f"train/images/n0{breed}_{n}.png"} for breed, count in ((1, 50), (2, 30), (3, 20))
              for n in range(breed * 1000, breed * 1000 + count)]
    held = held_out_ids(images, 0.1)
    assert len(held) == 10 and held == held_out_ids(images, 0.1)
    per_breed = {b: sum(str(i).startswith(str(b)) for i in held) for b in (1, 2, 3)}
    assert per_breed == {1: 5, 2: 3, 3: 2}


def test_merged_training_files_keep_each_images_own_folder(tmp_path, toy_train_json):
    original = json.loads(toy_train_json.read_text())
    extra = {**original, "info": {"data_root": str(tmp_path / "lab")}}
    (tmp_path / "extra.json").write_text(json.dumps(extra))
    merged = merge_coco([toy_train_json, tmp_path / "extra.json"], [None, None])
    files = [image["file_name"] for image in merged["images"]]
    assert len(files) == 12 and len(merged["annotations"]) == 12
    assert files[0].startswith(original["info"]["data_root"]) and files[6].startswith(str(tmp_path / "lab"))
    assert len({a["id"] for a in merged["annotations"]}) == 12 and merged["annotations"][6]["image_id"] == 7
    bad = {**original, "categories": [{**original["categories"][0], "keypoints": ["a", "b"]}]}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match="2 landmarks, the training set has 8"):
        merge_coco([toy_train_json, tmp_path / "bad.json"], [None, None])


PERSON = {"id": 5, "name": "person", "keypoints": [f"joint_{i}" for i in range(17)], "flip_index": list(range(8)),
          "iod_pair": [0, 1]}  # read as the faces' category: "flip_index is not a permutation of 0..16"


def test_the_category_the_annotations_name_is_read_not_the_first(toy_train_json, tmp_path):
    path = coco_copy(toy_train_json, tmp_path, lambda coco: coco["categories"].insert(0, PERSON))
    coco = load_coco(path)
    assert coco.meta["num_keypoints"] == 8 and coco.meta["iod_pair"] == [0, 1] and len(coco.records) == 6


def test_of_several_categories_named_the_one_whose_keypoint_count_the_annotations_have_is_read(toy_train_json,
                                                                                                 tmp_path):
    def add_boxes(coco):  # a box-only category (as CVAT exports one) with more annotations than the faces
        coco["categories"].insert(0, {"id": 2, "name": "face box", "keypoints": []})
        coco["annotations"] += [{**ann, "id": 100 + ann["id"], "category_id": 2, "keypoints": []}
                                for ann in coco["annotations"] * 2]
    coco = load_coco(coco_copy(toy_train_json, tmp_path, add_boxes))
    assert coco.meta["num_keypoints"] == 8 and len(coco.records) == 6


def test_an_unusable_category_is_named_when_the_file_has_several(toy_train_json, tmp_path):
    def break_flip(coco):
        coco["categories"][0]["flip_index"] = list(range(7)) + [0]
        coco["categories"].insert(0, PERSON)
    with pytest.raises(DataError, match=r"changed\.json: category 1 'toy': flip_index is not a permutation of 0\.\.7"):
        load_coco(coco_copy(toy_train_json, tmp_path, break_flip))


def test_merging_takes_each_files_face_category_and_its_annotations(tmp_path, toy_train_json):
    original = json.loads(toy_train_json.read_text())
    extra = {**original, "categories": [PERSON, {**original["categories"][0], "id": 3}],
             "annotations": [{**ann, "category_id": 3} for ann in original["annotations"]]}
    (tmp_path / "extra.json").write_text(json.dumps(extra))
    merged = merge_coco([toy_train_json, tmp_path / "extra.json"], [None, None])
    assert merged["categories"] == original["categories"] and len(merged["annotations"]) == 12
    assert {ann["category_id"] for ann in merged["annotations"]} == {original["categories"][0]["id"]}


def test_merging_an_empty_file_says_it_holds_no_images(tmp_path, toy_train_json):
    original = json.loads(toy_train_json.read_text())
    (tmp_path / "empty.json").write_text(json.dumps({"images": [], "annotations": [],
                                                     "categories": original["categories"]}))
    with pytest.raises(DataError, match=r"empty\.json: holds no images$"):
        merge_coco([toy_train_json, tmp_path / "empty.json"], [None, None])
