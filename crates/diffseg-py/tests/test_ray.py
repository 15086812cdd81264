"""examples/python/ray_segment.py end to end on a local Ray instance."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPOSITORY, TAU, TINY_WEIGHTS

pytest.importorskip("ray.data", reason="the Ray example needs ray[data]")


def test_ray_example_writes_one_label_map_per_image(segmenter, image_folder, tmp_path):
    out = tmp_path / "out"
    command = [
        sys.executable, str(REPOSITORY / "examples" / "python" / "ray_segment.py"),
        str(image_folder), "--out", str(out),
        "--weights", str(TINY_WEIGHTS), "--offline", "--tau", str(TAU),
        "--num-cpus", "2", "--concurrency", "1", "--batch-size", "2",
    ]
    subprocess.run(command, check=True, timeout=600)
    images = sorted(image_folder.glob("*.png"))
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [row["image"] for row in rows] == [str(path) for path in images]
    assert sorted(path.name for path in (out / "labels").iterdir()) == [path.name for path in images]
    for path, row in zip(images, rows):
        labels = np.asarray(Image.open(row["labels"]))
        expected = segmenter.segment(path)
        np.testing.assert_array_equal(labels, expected.labels)
        assert (row["height"], row["width"], row["num_segments"]) == (
            expected.height, expected.width, expected.num_segments)
