"""The Python results against the Rust CLI's, input kinds, and the result's views."""

import os
import pathlib
import subprocess

import numpy as np
import pytest
from PIL import Image

import diffseg

from conftest import REPOSITORY, TAU, TINY_WEIGHTS


@pytest.fixture(scope="session")
def cli_outputs(image_folder, tmp_path_factory) -> pathlib.Path:
    """`diffseg segment` (the Rust CLI, same weights and defaults) over the test images.
    $DIFFSEG_CLI names a built binary; otherwise cargo builds and runs it."""
    out = tmp_path_factory.mktemp("cli")
    arguments = ["segment", str(image_folder), "--out", str(out),
                 "--weights", str(TINY_WEIGHTS), "--offline", "--tau", str(TAU)]
    cli = os.environ.get("DIFFSEG_CLI")
    command = [cli] if cli else ["cargo", "run", "--quiet", "--release", "--locked",
                                 "-p", "diffseg-cli", "--"]
    subprocess.run(command + arguments, cwd=REPOSITORY, check=True)
    return out


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "grey"])
def test_labels_equal_the_rust_cli_bit_for_bit(segmenter, image_folder, cli_outputs, name):
    result = segmenter.segment(image_folder / f"{name}.png")
    rust_labels = np.asarray(Image.open(cli_outputs / f"{name}.png"))
    assert result.labels.shape == rust_labels.shape
    np.testing.assert_array_equal(result.labels, rust_labels)
    assert result.num_segments == int(rust_labels.max()) + 1
    assert result.num_segments >= 5, "too few segments for the comparison to mean much"


def test_overlay_equals_the_rust_cli(segmenter, rgb_path, cli_outputs):
    result = segmenter.segment(rgb_path)
    rust_overlay = np.asarray(Image.open(cli_outputs / "astronaut.overlay.png").convert("RGB"))
    np.testing.assert_array_equal(result.overlay(rgb_path), rust_overlay)


def test_numpy_pil_and_path_inputs_agree(segmenter, rgb_path, rgb_array):
    from_path = segmenter.segment(rgb_path).labels
    inputs = {
        "str": str(rgb_path),
        "numpy": rgb_array,
        "PIL": Image.open(rgb_path),
        # Strided (a view every other column of a wider array) is copied in order.
        "strided numpy": np.repeat(rgb_array, 2, axis=1)[:, ::2],
        "column-major numpy": np.asfortranarray(rgb_array),
        # Alpha is dropped, as for an RGBA file.
        "RGBA numpy": np.dstack([rgb_array, np.full(rgb_array.shape[:2], 255, np.uint8)]),
    }
    for kind, image in inputs.items():
        np.testing.assert_array_equal(segmenter.segment(image).labels, from_path, err_msg=kind)
    # Other PIL modes go through PIL's own conversion to RGB.
    palette = Image.open(rgb_path).convert("P", palette=Image.ADAPTIVE, colors=16)
    np.testing.assert_array_equal(segmenter.segment(palette).labels,
                                  segmenter.segment(np.asarray(palette.convert("RGB"))).labels)


def test_grey_inputs_agree(segmenter, image_folder):
    path = image_folder / "grey.png"
    grey = np.asarray(Image.open(path))
    assert grey.ndim == 2
    from_path = segmenter.segment(path).labels
    np.testing.assert_array_equal(segmenter.segment(grey).labels, from_path)
    np.testing.assert_array_equal(segmenter.segment(grey[:, :, None]).labels, from_path)
    np.testing.assert_array_equal(segmenter.segment(Image.open(path)).labels, from_path)


def test_batch_equals_one_by_one(segmenter, image_folder):
    paths = sorted(image_folder.glob("*.png"))
    batch = segmenter.segment_batch([paths[0], np.asarray(Image.open(paths[1])), Image.open(paths[2])])
    assert len(batch) == 3
    for path, result in zip(paths, batch):
        np.testing.assert_array_equal(result.labels, segmenter.segment(path).labels)
    assert segmenter.segment_batch([]) == []


def test_result_views_agree_with_the_labels(segmenter, rgb_path):
    result = segmenter.segment(rgb_path)
    labels = result.labels
    assert labels.dtype == np.uint16 and labels.shape == (72, 96)
    assert (result.height, result.width) == labels.shape
    assert not labels.flags.writeable
    masks = result.masks()
    assert masks.dtype == np.bool_ and masks.shape == (result.num_segments, 72, 96)
    assert (masks.sum(axis=0) == 1).all()
    binary = result.segments
    for index, (record, rle_record) in enumerate(zip(binary, result.segments_as("uncompressed_rle"))):
        mask = labels == index
        np.testing.assert_array_equal(masks[index], mask)
        np.testing.assert_array_equal(record["segmentation"], mask)
        assert record["label"] == index == rle_record["label"]
        assert record["area"] == rle_record["area"] == mask.sum()
        rows, columns = np.nonzero(mask)
        x, y = columns.min(), rows.min()
        assert record["bbox"] == [x, y, columns.max() - x + 1, rows.max() - y + 1]
        np.testing.assert_array_equal(decode_rle(rle_record["segmentation"]), mask)


def decode_rle(rle) -> np.ndarray:
    """COCO uncompressed RLE → bool mask: runs alternate 0/1 over column-major pixels."""
    height, width = rle["size"]
    values = np.concatenate([np.full(count, index % 2 == 1) for index, count in enumerate(rle["counts"])])
    return values.reshape(width, height).T


def test_save_labels_writes_what_the_cli_writes(segmenter, rgb_path, cli_outputs, tmp_path):
    segmenter.segment(rgb_path).save_labels(tmp_path / "labels.png")
    assert (tmp_path / "labels.png").read_bytes() == (cli_outputs / "astronaut.png").read_bytes()


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "grey"])
def test_merge_of_the_attention_equals_segment(segmenter, image_folder, name):
    path = image_folder / f"{name}.png"
    attention = segmenter.attention(path)
    assert list(attention) == ["self_attn.16", "self_attn.8", "self_attn.4", "self_attn.2", "placement"]
    for key, probs in attention.items():
        if key == "placement":
            continue
        cells = int(key.split(".")[1]) ** 2
        assert probs.dtype == np.float32 and probs.shape == (cells, cells)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-3)
    expected = segmenter.segment(path).labels
    merged = diffseg.merge(attention, tau=TAU)
    np.testing.assert_array_equal(merged.labels, expected)
    column_major = {key: np.asfortranarray(value) for key, value in attention.items()}
    np.testing.assert_array_equal(diffseg.merge(column_major, tau=TAU).labels, expected)


def test_merge_sweeps_options_without_the_model(segmenter, rgb_path):
    attention = segmenter.attention(rgb_path)
    counts = [diffseg.merge(attention, tau=tau).num_segments for tau in (0.003, 0.004, 0.005)]
    assert counts[0] > counts[-1] >= 1
    refined = diffseg.merge(attention, tau=[0.005, 0.004, 0.003], refine=True)
    assert refined.labels.shape == (72, 96)
    # Without the placement, the labels cover the model's square input (128 px here).
    maps_only = {key: value for key, value in attention.items() if key != "placement"}
    assert diffseg.merge(maps_only, tau=TAU).labels.shape == (128, 128)


def test_overlay_options(segmenter, rgb_path, rgb_array):
    result = segmenter.segment(rgb_path)
    np.testing.assert_array_equal(result.overlay(rgb_array, opacity=0.0, outline=None), rgb_array)
    tinted = result.overlay(rgb_array, opacity=1.0, outline=None)
    assert tinted.shape == rgb_array.shape and tinted.dtype == np.uint8
    # Fully tinted, each segment is one colour.
    for index in range(result.num_segments):
        assert len(np.unique(tinted[result.labels == index], axis=0)) == 1


def test_options_reach_the_segmenter(segmenter):
    assert segmenter.input_size == 128
    assert (segmenter.backend, segmenter.precision, segmenter.fit) == ("cpu", "f32", "pad")
    assert (segmenter.tau, segmenter.iterations, segmenter.anchors, segmenter.refine) == ([pytest.approx(TAU)], 3, 16, False)
    assert pathlib.Path(segmenter.weights) == TINY_WEIGHTS
