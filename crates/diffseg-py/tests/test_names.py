"""Naming segments from a vocabulary (issue 20) on the tiny model with CLIP's published
tokenizer: segment dicts get `name`, `name_score` and `names`; the labels are unchanged."""

import gzip
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import diffseg

from conftest import REPOSITORY, TAU, TINY_WEIGHTS

TOKENIZER_FIXTURE = REPOSITORY / "crates" / "diffseg-sd" / "tests" / "fixtures" / "clip-tokenizer"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """The committed tokenizer fixture unpacked into a diffusers `tokenizer/` folder."""
    folder = tmp_path_factory.mktemp("tokenizer")
    for name in ["vocab.json", "merges.txt"]:
        with gzip.open(TOKENIZER_FIXTURE / f"{name}.gz", "rb") as packed, open(folder / name, "wb") as out:
            shutil.copyfileobj(packed, out)
    shutil.copy(TOKENIZER_FIXTURE / "tokenizer_config.json", folder / "tokenizer_config.json")
    return folder


def named_segmenter(tokenizer, vocabulary, **options):
    return diffseg.Segmenter(weights=TINY_WEIGHTS, allow_download=False, tau=TAU,
                             vocabulary=vocabulary, tokenizer=tokenizer, **options)


def test_segments_carry_names_and_keep_their_labels(segmenter, rgb_array, tokenizer):
    entries = ["sky", "a red car", "person"]
    named = named_segmenter(tokenizer, entries, top_k=2).segment(rgb_array)
    plain = segmenter.segment(rgb_array)
    np.testing.assert_array_equal(named.labels, plain.labels)
    assert all("name" not in segment for segment in plain.segments)
    segments = named.segments
    assert len(segments) > 1
    for segment in segments:
        assert segment["name"] in entries
        assert len(segment["names"]) == 2
        assert segment["names"][0] == (segment["name"], segment["name_score"])


def test_a_preset_or_one_entry_names_every_segment(rgb_array, tokenizer):
    one = named_segmenter(tokenizer, "road surface").segment(rgb_array)
    assert {segment["name"] for segment in one.segments} == {"road surface"}
    preset = named_segmenter(tokenizer, "coco-stuff-27").segment(rgb_array)
    assert all(isinstance(segment["name"], str) for segment in preset.segments)


def test_a_model_without_a_tokenizer_is_a_value_error():
    with pytest.raises(ValueError, match="no CLIP tokenizer"):
        diffseg.Segmenter(weights=TINY_WEIGHTS, allow_download=False, vocabulary=["sky"])
    with pytest.raises(TypeError):
        diffseg.Segmenter(weights=TINY_WEIGHTS, allow_download=False, vocabulary=3)


def test_the_naming_example_prints_names_and_writes_a_name_map(segmenter, rgb_path, tokenizer,
                                                                tmp_path):
    """examples/python/name_segments.py end to end: its name map is each pixel's segment's
    name, as a vocabulary index, and a second run refuses to overwrite it."""
    entries = ["sky", "a red car", "person"]
    out = tmp_path / "names"
    command = [sys.executable, str(REPOSITORY / "examples" / "python" / "name_segments.py"),
               str(rgb_path), "--vocabulary", ",".join(entries), "--top-k", "2",
               "--weights", str(TINY_WEIGHTS), "--tokenizer", str(tokenizer),
               "--tau", str(TAU), "--out", str(out)]
    run = subprocess.run(command, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    expected = named_segmenter(tokenizer, entries, top_k=2).segment(str(rgb_path))
    assert f"{expected.num_segments} segments" in run.stdout
    report = json.loads((out / "astronaut.names.json").read_text())
    assert report["vocabulary"] == entries
    assert [s["name"] for s in report["segments"]] == [s["name"] for s in expected.segments]
    names = np.asarray(Image.open(out / "astronaut.names.png"))
    by_label = np.array([entries.index(s["name"]) for s in expected.segments])
    np.testing.assert_array_equal(names, by_label[expected.labels])
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode != 0 and "exists" in again.stderr
