"""`diffseg segment`'s masks read by pycocotools: every segment's RLE in each image's JSON
decodes to exactly its label in the (palette) label PNG, and the run's `--coco` file loads
as a COCO dataset and as a results list."""

import copy
import json
import os
import pathlib
import subprocess

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from conftest import PHOTOS, REPOSITORY, TAU, TINY_WEIGHTS

NAMES = ["a/astronaut.png", "b/chelsea.png"]


def segment(*arguments) -> subprocess.CompletedProcess:
    """`diffseg segment ARGUMENTS` on the tiny fixture model (the CLI named by
    $DIFFSEG_CLI, else built and run by cargo)."""
    cli = os.environ.get("DIFFSEG_CLI")
    command = [cli] if cli else ["cargo", "run", "--quiet", "--release", "--locked",
                                 "-p", "diffseg-cli", "--"]
    arguments = ["segment", *map(str, arguments),
                 "--weights", str(TINY_WEIGHTS), "--offline", "--tau", str(TAU)]
    return subprocess.run(command + arguments, cwd=REPOSITORY, capture_output=True, text=True)


@pytest.fixture()
def images(tmp_path) -> pathlib.Path:
    """Two small images in sub-folders: a non-square one and a square one."""
    folder = tmp_path / "images"
    for name, size in zip(NAMES, [(64, 48), (56, 56)]):
        (folder / name).parent.mkdir(parents=True)
        photo = Image.open(PHOTOS / pathlib.Path(name).name).convert("RGB")
        photo.resize(size, Image.BILINEAR).save(folder / name)
    return folder


def label_map(path: pathlib.Path) -> np.ndarray:
    """The labels of a label PNG: the palette indices, not the colours."""
    image = Image.open(path)
    assert image.mode == "P", f"{path}: {image.mode}, not a palette PNG"
    return np.asarray(image)


def test_every_segments_rle_decodes_to_its_label(images, tmp_path):
    out = tmp_path / "out"
    run = segment(images, "--out", out)
    assert run.returncode == 0, run.stderr
    for name in NAMES:
        stem = out / pathlib.Path(name).with_suffix("")
        labels = label_map(stem.with_suffix(".png"))
        description = json.loads(stem.with_suffix(".json").read_text())
        segments = description["segments"]
        assert len(segments) >= 5, "too few segments for the check to mean much"
        assert [record["label"] for record in segments] == list(range(labels.max() + 1))
        for record in segments:
            rle = record["segmentation"]
            assert isinstance(rle["counts"], str), "compressed RLE"
            mask = mask_utils.decode(rle)
            assert mask.shape == labels.shape
            np.testing.assert_array_equal(mask.astype(bool), labels == record["label"])
            assert mask_utils.area(rle) == record["area"]
            np.testing.assert_array_equal(mask_utils.toBbox(rle), record["bbox"])


def test_the_coco_file_loads_in_pycocotools(images, tmp_path):
    out, coco_path = tmp_path / "out", tmp_path / "run.coco.json"
    first = segment(images, "--out", out)
    assert first.returncode == 0, first.stderr
    # Both skipped as already done: the COCO file covers them from their JSON.
    resumed = segment(images, "--out", out, "--coco", coco_path)
    assert resumed.returncode == 0 and "0 segmented, 2 skipped" in resumed.stderr, resumed.stderr
    # One redone, one skipped: the same file.
    (out / "b" / "chelsea.json").unlink()
    mixed_path = tmp_path / "mixed.coco.json"
    mixed = segment(images, "--out", out, "--coco", mixed_path)
    assert mixed.returncode == 0 and "1 segmented, 1 skipped" in mixed.stderr, mixed.stderr
    assert json.loads(mixed_path.read_text()) == json.loads(coco_path.read_text())

    dataset = COCO(str(coco_path))
    assert sorted(image["file_name"] for image in dataset.loadImgs(dataset.getImgIds())) == NAMES
    assert [category["name"] for category in dataset.loadCats(dataset.getCatIds())] == ["segment"]
    for image in dataset.loadImgs(dataset.getImgIds()):
        labels = label_map((out / image["file_name"]).with_suffix(".png"))
        assert (image["height"], image["width"]) == labels.shape
        annotations = dataset.loadAnns(dataset.getAnnIds(imgIds=[image["id"]]))
        assert len(annotations) == labels.max() + 1
        # One annotation per segment, in label order.
        for label, annotation in enumerate(annotations):
            mask = dataset.annToMask(annotation).astype(bool)
            np.testing.assert_array_equal(mask, labels == label)

    annotations = json.loads(coco_path.read_text())["annotations"]
    results = dataset.loadRes(copy.deepcopy(annotations))
    assert len(results.getAnnIds()) == len(annotations)
    for ours, loaded in zip(annotations, results.loadAnns(results.getAnnIds())):
        assert loaded["image_id"] == ours["image_id"]
        # Results with a box take the box's area (pycocotools' rule); the mask is ours.
        assert loaded["area"] == ours["bbox"][2] * ours["bbox"][3]
        assert mask_utils.area(loaded["segmentation"]) == ours["area"]


def test_a_coco_file_diffseg_did_not_write_is_never_replaced(images, tmp_path):
    theirs = tmp_path / "annotations.json"
    theirs.write_text('{"images": [], "annotations": [], "categories": []}')
    run = segment(images, "--out", tmp_path / "out", "--coco", theirs)
    assert run.returncode == 2, run.stderr
    assert "annotations.json" in run.stderr
    assert theirs.read_text() == '{"images": [], "annotations": [], "categories": []}'
    assert not (tmp_path / "out").exists()
