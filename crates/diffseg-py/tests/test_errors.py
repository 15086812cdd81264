"""Every bad input raises a Python exception of the right type with the project's message."""

import json
import shutil

import numpy as np
import pytest

import diffseg

from conftest import TINY_WEIGHTS


@pytest.mark.parametrize(
    "image, error, message",
    [
        (np.zeros((8, 8), np.float32), TypeError, "must be uint8, got float32"),
        (np.zeros((8, 8, 2), np.uint8), ValueError, "got shape [8, 8, 2]"),
        (np.zeros((8,), np.uint8), ValueError, "must be H×W (grey)"),
        (np.zeros((0, 8, 3), np.uint8), ValueError, "no pixels"),
        (np.zeros((16385, 1), np.uint8), ValueError, "too large (at most 16384×16384 pixels)"),
        (42, TypeError, "expected an image"),
        ([[1, 2], [3, 4]], TypeError, "got list"),
    ],
)
def test_bad_arrays_and_objects(segmenter, image, error, message):
    with pytest.raises(error, match=None) as raised:
        segmenter.segment(image)
    assert message in str(raised.value)


def test_missing_file(segmenter, tmp_path):
    missing = tmp_path / "nowhere.png"
    with pytest.raises(FileNotFoundError) as raised:
        segmenter.segment(missing)
    assert str(missing) in str(raised.value) and "cannot read" in str(raised.value)


def test_file_that_is_not_an_image(segmenter, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ValueError) as raised:
        segmenter.segment(text)
    assert str(text) in str(raised.value) and "cannot decode" in str(raised.value)


def test_truncated_image(segmenter, rgb_path, tmp_path):
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(rgb_path.read_bytes()[:200])
    with pytest.raises(ValueError, match="cannot decode"):
        segmenter.segment(truncated)


def test_one_bad_image_fails_the_batch(segmenter, rgb_array, tmp_path):
    with pytest.raises(FileNotFoundError):
        segmenter.segment_batch([rgb_array, tmp_path / "nowhere.png"])
    with pytest.raises(TypeError):
        segmenter.segment_batch(5)


def test_missing_weights_path(tmp_path):
    with pytest.raises(diffseg.WeightsNotFoundError) as raised:
        diffseg.Segmenter(weights=tmp_path / "no-model", allow_download=False)
    assert isinstance(raised.value, FileNotFoundError)
    assert "no-model" in str(raised.value) and "do not exist" in str(raised.value)


def test_no_weights_and_no_download(tmp_path, monkeypatch):
    monkeypatch.delenv("DIFFSEG_WEIGHTS", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(diffseg.WeightsNotFoundError) as raised:
        diffseg.Segmenter(model="nobody/no-such-model", allow_download=False)
    assert "nobody/no-such-model" in str(raised.value)


def test_weights_that_are_not_a_model(tmp_path):
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(diffseg.ModelError) as raised:
        diffseg.Segmenter(weights=tmp_path, allow_download=False)
    assert str(tmp_path) in str(raised.value)


@pytest.mark.parametrize(
    "component, field, value",
    [
        ("unet", "norm_num_groups", 0),
        ("unet", "layers_per_block", 100_000_000),
        ("unet", "sample_size", 100_000),
        ("text_encoder", "num_attention_heads", 0),
        ("text_encoder", "num_hidden_layers", 1_000_000_000),
    ],
)
def test_absurd_configs_raise_instead_of_killing_the_interpreter(tmp_path, component, field, value):
    # Issue 19: these panicked, aborted or were killed for memory, taking Python with them.
    weights = tmp_path / "tiny"
    shutil.copytree(TINY_WEIGHTS, weights)
    config_path = weights / component / "config.json"
    config = json.loads(config_path.read_text())
    config[field] = value
    config_path.write_text(json.dumps(config))
    with pytest.raises(diffseg.ModelError) as raised:
        diffseg.Segmenter(weights=weights, allow_download=False)
    assert field in str(raised.value)
    assert "config.json" in str(raised.value)


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"backend": "tpu"}, ValueError, "unknown backend `tpu`"),
        ({"precision": "f8"}, ValueError, "unknown precision `f8`"),
        ({"fit": "zoom"}, ValueError, "unknown fit `zoom`"),
        ({"tau": -1.0}, ValueError, "must be finite and positive"),
        ({"tau": [1.0, 1.0]}, ValueError, "2 KL thresholds for 3 iterations"),
        ({"anchors": 1}, ValueError, "at least 2 are needed"),
        ({"iterations": 0}, ValueError, "iterations must be at least 1"),
        ({"precision": "f16"}, diffseg.BackendUnavailableError, "precision f16 is not available"),
        ({"tau": "high"}, TypeError, "tau"),
    ],
)
def test_bad_options(options, error, message):
    with pytest.raises(error) as raised:
        diffseg.Segmenter(weights=TINY_WEIGHTS, allow_download=False, **options)
    assert message in str(raised.value)


def test_bad_attention(segmenter, image_folder):
    attention = segmenter.attention(image_folder / "chelsea.png")
    with pytest.raises(ValueError, match="expected `self_attn.SIDE`"):
        diffseg.merge({"attention": attention["self_attn.16"]})
    with pytest.raises(ValueError, match=r"shape \[64, 64\], expected \[256, 256\]"):
        diffseg.merge({**attention, "self_attn.16": attention["self_attn.8"]})
    with pytest.raises(TypeError, match="float32"):
        diffseg.merge({**attention, "self_attn.16": attention["self_attn.16"].astype(np.float64)})
    with pytest.raises(ValueError, match="not a probability distribution"):
        diffseg.merge({**attention, "self_attn.16": attention["self_attn.16"] * 2})
    with pytest.raises(ValueError, match="holds no maps"):
        diffseg.merge({})
    for placement in (np.array([72, 96, 0, 0]), np.array([0, 96, 0, 0, 128]), np.array([1.0] * 5)):
        with pytest.raises(ValueError, match="placement"):
            diffseg.merge({**attention, "placement": placement})
    with pytest.raises(ValueError, match="at least 2 are needed"):
        diffseg.merge(attention, anchors=1)


def test_bad_overlay_options(segmenter, rgb_array):
    result = segmenter.segment(rgb_array)
    with pytest.raises(ValueError, match="opacity 1.5 is not between 0 and 1"):
        result.overlay(rgb_array, opacity=1.5)
    with pytest.raises(ValueError, match="outline"):
        result.overlay(rgb_array, outline=(1, 2))


def test_bad_output_mode(segmenter, rgb_array):
    with pytest.raises(ValueError, match="unknown output_mode `rle`"):
        segmenter.segment(rgb_array).segments_as("rle")


def test_unwritable_labels(segmenter, rgb_array, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError):
        segmenter.segment(rgb_array).save_labels(blocker / "labels.png")
