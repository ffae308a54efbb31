"""YOLO segmentation folders and person-mask folders as labelled sets (eval --yolo, --person-masks)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import DATASETS, REPO

from edgeseg.errors import EdgesegError
from edgeseg.evaluation import scenes, yolo_data


class Painter:
    """A stand-in model: calls pet (class 0) the pixels of a fixed rectangle (fractions of the frame)."""

    def __init__(self, box=(0.0, 0.0, 0.5, 1.0)) -> None:
        self.box = box

    def predict(self, image):
        h, w = image.shape[:2]
        mask = np.ones((h, w), np.uint8)
        x0, y0, x1, y1 = self.box
        mask[int(y0 * h):int(y1 * h), int(x0 * w):int(x1 * w)] = 0
        return mask

    def describe(self):
        return {"model": "painter"}


def _yolo_folder(tmp_path):
    root = tmp_path / "yolo"
    (root / "images" / "sub").mkdir(parents=True)
    (root / "labels" / "sub").mkdir(parents=True)
    for name in ("cat.jpg", "sub/dog.png", "empty.jpg"):
        cv2.imwrite(str(root / "images" / name), np.full((100, 200, 3), 128, np.uint8))
    # two polygons in one file: a cat (15) on the left half, a person (0) on the right half
    (root / "labels" / "cat.txt").write_text("15 0 0 0.5 0 0.5 1 0 1\n0 0.5 0 1 0 1 1 0.5 1\n")
    (root / "labels" / "sub" / "dog.txt").write_text("16 0.5 0.5 0.5 1.0\n")  # a box: the centre half
    return root  # empty.jpg has no label file: no object


def test_yolo_labels_polygons_boxes_and_bad_lines(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("15 0.1 0.1 0.9 0.1 0.5 0.9\n\n16 0.5 0.5 0.2 0.2\n")
    shapes = yolo_data.read_yolo_labels(path)
    assert [s.cls for s in shapes] == [15, 16] and shapes[1].points.shape == (4, 2)
    assert np.allclose(shapes[1].points[0], [0.4, 0.4])
    mask = scenes.rasterize(shapes, {16}, (100, 100))
    assert abs(int(mask.sum()) - 400) <= 45  # a 20 x 20 box
    for bad, what in (("15 0.1 0.2 0.3\n", "line 1"), ("x 0.1 0.2 0.3 0.4 0.5 0.6\n", "line 1"),
                      ("1 0 0 1 1 1 0\n2 nan 0 1 1 1 0\n", "line 2"), ("99999999999 0 0 1 1 1 0\n", "class id")):
        path.write_text(bad)
        with pytest.raises(EdgesegError, match=what):
            yolo_data.read_yolo_labels(path)


def test_yolo_scores_iou_people_and_photos_without_animals(tmp_path):
    root = _yolo_folder(tmp_path)
    data = yolo_data.load_yolo_set(root)
    assert sorted(p.name for p, _ in data.pairs) == ["cat.jpg", "dog.png", "empty.jpg"]
    assert dict((p.name, lbl is None) for p, lbl in data.pairs)["empty.jpg"]
    (r,) = scenes.score_yolo([Painter()], data)
    assert (r["with_animal"], r["without_animal"]) == (2, 1)
    # cat: the left half exactly (IoU 1); dog: the centre box (0.25-0.75) against the left half: 0.25/0.75
    assert r["per_image_iou"]["cat.jpg"] == pytest.approx(1.0, abs=0.02)
    assert r["per_image_iou"]["dog.png"] == pytest.approx(1 / 3, abs=0.02)
    assert r["pet_share_without_animal"] == pytest.approx(0.5) and r["per_image_pet_share"] == {"empty.jpg": 0.5}
    assert r["person_pixels_called_pet"] == pytest.approx(0.0, abs=0.02)  # the person is on the right half
    (r,) = scenes.score_yolo([Painter((0.5, 0, 1, 1))], data, animal_classes=[15, 16])
    assert r["person_pixels_called_pet"] == pytest.approx(1.0, abs=0.02) and r["missed"] == 1


def _image(path, shape=(60, 80)):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((*shape, 3), 128, np.uint8))


def test_an_ultralytics_dataset_yaml_one_split_its_names_and_label_pairing(tmp_path, monkeypatch):
    ds = tmp_path / "datasets" / "pets"  # Ultralytics' coco8-seg layout: images/ and labels/, split by folder
    for split, names in (("train", ("a.jpg", "b.jpg")), ("val", ("c.jpg", "d.png"))):
        for name in names:
            _image(ds / "images" / split / name)
    (ds / "labels" / "val").mkdir(parents=True)
    (ds / "labels" / "val" / "c.txt").write_text("1 0 0 1 0 1 1\n")  # d.png has no label file: no object
    cfg = tmp_path / "cfg" / "pets.yaml"  # kept apart from the data, as Ultralytics keeps its own
    cfg.parent.mkdir()
    cfg.write_text("path: ../datasets/pets  # root\ntrain: images/train\nval: images/val\n"
                   "names:\n  0: person\n  1: Cat\n  2: dog\n")
    ds = ds.resolve()
    monkeypatch.chdir(tmp_path)  # path: is tried from the working directory first (here: not there) ...
    data = yolo_data.load_yolo_set(cfg)
    assert (data.split, sorted(p.name for p, _ in data.pairs)) == ("val", ["c.jpg", "d.png"])  # ... then the YAML's
    assert dict((p.name, lbl) for p, lbl in data.pairs) == {"c.jpg": ds / "labels" / "val" / "c.txt", "d.png": None}
    assert data.names == {0: "person", 1: "Cat", 2: "dog"} and data.class_ids(["cat", 2, "DOG"], "-x") == [1, 2, 2]
    with pytest.raises(EdgesegError, match=r"--animal-classes: no class named 'hamster' here \(names: 0 person, 1 Cat"):
        data.class_ids(["hamster"], "--animal-classes")
    with pytest.raises(EdgesegError, match=r"no class 15 here"):  # COCO's ids, the default, in a set that names its own
        data.class_ids([15, 16], "--animal-classes")
    assert sorted(p.name for p, _ in yolo_data.load_yolo_set(cfg, "train").pairs) == ["a.jpg", "b.jpg"]
    with pytest.raises(EdgesegError, match=r"no test: split in it \(it has: train, val\); choose one with --yolo"):
        yolo_data.load_yolo_set(cfg, "test")
    (r,) = scenes.score_yolo([Painter((0, 0, 1, 1))], data, data.class_ids(["cat"], "-x"))  # names from names:
    assert r["per_image_iou"] == {"c.jpg": pytest.approx(0.5, abs=0.05)} and r["pet_share_without_animal"] == 1.0
    # the same folder without its YAML: a split is an images/ subfolder, and one must be named where there are any
    folder = yolo_data.load_yolo_set(ds, "val")
    assert (folder.split, [(p.name, lbl) for p, lbl in folder.pairs]) == (
        "val", [("c.jpg", ds / "labels" / "val" / "c.txt"), ("d.png", None)])
    with pytest.raises(EdgesegError, match=r"images/ holds the splits train, val: choose one with --yolo-split"):
        yolo_data.load_yolo_set(ds)
    with pytest.raises(EdgesegError, match=r"no images/test/ folder here \(images/ has the folders: train, val\)"):
        yolo_data.load_yolo_set(ds, "test")


def test_the_person_class_by_name_or_id_and_none_where_a_set_names_no_person(tmp_path):
    named = yolo_data.YoloSet(tmp_path, "val", [], {0: "Person", 1: "cat"})
    cats = yolo_data.YoloSet(tmp_path, "val", [], {0: "cat", 1: "dog"})  # class 0 is no person here
    bare = yolo_data.YoloSet(tmp_path, None, [], {})  # no names: COCO-80's ids
    assert (named.person_id("person"), cats.person_id("person"), bare.person_id("person")) == (0, None, 0)
    assert (named.person_id(None), named.person_id(1), bare.person_id(7), named.person_id("CAT")) == (None, 1, 7, 1)
    with pytest.raises(EdgesegError, match="--person-class: no class named 'human' here"):
        cats.person_id("human")
    with pytest.raises(EdgesegError, match="--person-class: no class 5 here"):
        cats.person_id(5)


def test_roboflow_and_listed_splits_and_names_as_a_list(tmp_path):
    root = tmp_path.resolve() / "export"  # a Roboflow export: split/images, split/labels, ../split/images
    _image(root / "valid" / "images" / "x.jpg")
    (root / "valid" / "labels").mkdir()
    (root / "valid" / "labels" / "x.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    _image(root / "extra" / "images" / "y.jpg")
    (root / "data.yaml").write_text("train: ../train/images\nval: [../valid/images, lists/extra.txt]\n"
                                    "nc: 2\nnames: ['cat', 'dog']\n")
    (root / "lists").mkdir()
    (root / "lists" / "extra.txt").write_text(f"./../extra/images/y.jpg\n\n{root / 'valid' / 'images' / 'x.jpg'}\n")
    data = yolo_data.load_yolo_set(root)  # the export's folder: read through its data.yaml
    assert data.source == root / "data.yaml" and data.split == "val"
    assert [p.name for p, _ in data.pairs] == ["x.jpg", "y.jpg", "x.jpg"] and data.names == {0: "cat", 1: "dog"}
    assert data.pairs[0][1] == root / "valid" / "labels" / "x.txt" and data.pairs[1][1] is None
    # a folder takes its class names from a data.yaml beside images/ when there is no classes.txt
    (root / "valid" / "data.yaml").write_text("names: {0: cat}\n")
    assert yolo_data.load_yolo_set(root / "valid").names == {0: "cat"}
    for text, what in (("val: nowhere\n", r"'nowhere' is neither a folder nor a \.txt list"),
                       ("path: /no/such/root\nval: images\n", "set path: to the dataset's root"),
                       ("- a list\n", "not a dataset YAML"), ("val: [unclosed\n", "not valid YAML"),
                       ("val: ../valid/images\nnames: {0: [cat]}\n", "names: should list"),
                       ("val: lists/extra.txt\n", None)):
        (root / "data.yaml").write_text(text)
        if what is None:  # a listed image that is not there is named with its line
            (root / "lists" / "extra.txt").write_text("./gone.jpg\n")
            what = "line 1: ./gone.jpg is not an image file"
        with pytest.raises(EdgesegError, match=what):
            yolo_data.load_yolo_set(root / "data.yaml")


def test_pet_pixels_without_an_animal_split_by_the_label_they_fall_on(tmp_path):
    root = tmp_path / "yolo"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    cv2.imwrite(str(root / "images" / "table.jpg"), np.full((100, 200, 3), 128, np.uint8))
    # a table (60) over the left 60% of the frame, a pizza (53) on it: the box x 0.1-0.3, y 0.25-0.75
    (root / "labels" / "table.txt").write_text("60 0 0 0.6 0 0.6 1 0 1\n53 0.2 0.5 0.2 0.5\n")
    (r,) = scenes.score_yolo([Painter((0, 0, 0.8, 1))], yolo_data.load_yolo_set(root))  # 80% of the frame called pet
    by = r["pet_share_by_label"]
    assert list(by) == ["60", "unlabelled", "53"]  # largest first; the pizza's pixels are the pizza's
    assert by["53"] == pytest.approx(0.1, abs=0.01) and by["60"] == pytest.approx(0.5, abs=0.01)
    assert by["unlabelled"] == pytest.approx(0.2, abs=0.01)
    assert sum(by.values()) == pytest.approx(r["pet_share_without_animal"])
    (root / "classes.txt").write_text("\n".join(f"c{i}" for i in range(53)) + "\npizza\n")
    (r,) = scenes.score_yolo([Painter((0, 0, 0.8, 1))], yolo_data.load_yolo_set(root))
    assert set(r["pet_share_by_label"]) == {"pizza", "60", "unlabelled"}  # 60 has no name in classes.txt


def test_the_yolo_table_shows_the_columns_a_set_has_photos_for_and_names_its_worst(tmp_path, capsys):
    from edgeseg.cli.evaluation import _yolo_table

    root = _yolo_folder(tmp_path)
    section = {"folder": "yolo", "split": None, "animal_classes": [15, 16],
               "models": scenes.score_yolo([Painter()], yolo_data.load_yolo_set(root))}
    _yolo_table(section)
    both = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert "0.33 (dog.png)" in both and "50.0 (empty.jpg)" in both  # the lowest IoU, the most painted
    assert "lowest IoU (photo)" in both and "worst photo pet %" in both
    (root / "labels" / "cat.txt").unlink()
    (root / "labels" / "sub" / "dog.txt").unlink()  # no animal left: no animal columns
    section["models"] = scenes.score_yolo([Painter()], yolo_data.load_yolo_set(root))
    _yolo_table(section)
    free = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert "animal IoU" not in free and "missed" not in free and "worst photo pet %" in free


def test_person_masks_smaller_than_their_photo_and_numbered(tmp_path):
    root = tmp_path / "people"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for n in (1, 2, 250):
        cv2.imwrite(str(root / "images" / f"{n}.jpg"), np.zeros((100, 200, 3), np.uint8))
        mask = np.zeros((50, 100), np.uint8)
        mask[:, :50] = 255  # the left half, at half the photo's size
        cv2.imwrite(str(root / "masks" / f"{n}.png"), mask)
    pairs = scenes.person_pairs(root, scenes.parse_range("2-300"))
    assert [p.name for p, _ in pairs] == ["2.jpg", "250.jpg"]
    (r,) = scenes.score_people([Painter((0, 0, 0.25, 1))], pairs)
    assert r["person_pixels_called_pet"] == pytest.approx(0.5, abs=0.01)  # half the person, after resizing
    assert r["all_pixels_called_pet"] == pytest.approx(0.25, abs=0.01) and r["photos_painted"] == 2
    (root / "masks" / "2.png").unlink()
    with pytest.raises(EdgesegError, match=r"no mask 2\.png"):
        scenes.person_pairs(root)
    with pytest.raises(EdgesegError, match="201-300"):
        scenes.parse_range("300-201")


@pytest.mark.skipif(not (DATASETS / "people-and-scenes").is_dir(), reason="needs ../shared/datasets")
def test_eval_reads_the_shared_scene_sets(cli):
    import json

    root = DATASETS / "people-and-scenes"
    r = cli("eval", REPO / "models" / "segnet_dsc.onnx", "--yolo", root / "coco128-cats-dogs", "--yolo",
            root / "coco128", "--person-masks", root / "people", "--numbered", "201-300", "--json")
    assert r.code == 0, r.err
    out = json.loads(r.out)
    cats_dogs, coco = out["yolo"]
    (y,) = cats_dogs["models"]
    assert cats_dogs["folder"].endswith("coco128-cats-dogs") and y["with_animal"] == 12 and 0 < y["animal_iou_mean"] < 1
    (c,) = coco["models"]
    assert c["images"] == 94 and c["with_animal"] == 0 and 0 <= c["pet_share_without_animal"] < 1
    assert sum(c["pet_share_by_label"].values()) == pytest.approx(c["pet_share_without_animal"])
    (p,) = out["people"]["models"]
    assert p["images"] == 90 and 0 < p["person_share_mean"] < 1
