"""examples/python/ray_segment.py end to end on a local Ray instance."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPOSITORY, TAU, TINY_WEIGHTS

pytest.importorskip("ray.data", reason="the Ray example needs ray[data]")


@pytest.fixture(scope="module")
def colliding_folder(image_folder, tmp_path_factory):
    """Images whose names collide by stem: a/x.png and b/x.png (same name, two folders),
    a/x.jpg (same stem as a/x.png, same folder)."""
    root = tmp_path_factory.mktemp("colliding")
    (root / "a").mkdir()
    (root / "b").mkdir()
    shutil.copy(image_folder / "astronaut.png", root / "a" / "x.png")
    shutil.copy(image_folder / "chelsea.png", root / "b" / "x.png")
    Image.open(image_folder / "grey.png").convert("RGB").save(root / "a" / "x.jpg", quality=95)
    return root


def test_ray_example_keys_results_by_relative_path_and_caps_rayon(segmenter, colliding_folder,
                                                                   tmp_path):
    out = tmp_path / "out"
    command = [
        sys.executable, str(REPOSITORY / "examples" / "python" / "ray_segment.py"),
        str(colliding_folder), "--out", str(out),
        "--weights", str(TINY_WEIGHTS), "--offline", "--tau", str(TAU),
        # 3 logical CPUs: 2 for the actor, 1 for reading the images.
        "--num-cpus", "3", "--cpus-per-actor", "2", "--concurrency", "1", "--batch-size", "2",
    ]
    subprocess.run(command, check=True, timeout=600)
    images = sorted(path for path in colliding_folder.rglob("*") if path.is_file())
    keys = [path.relative_to(colliding_folder).as_posix() for path in images]
    assert keys == ["a/x.jpg", "a/x.png", "b/x.png"]
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [row["image"] for row in rows] == [str(path) for path in images]
    assert [row["key"] for row in rows] == keys
    # One label PNG per image: none overwrote another.
    written = sorted(path.relative_to(out / "labels").as_posix()
                     for path in (out / "labels").rglob("*.png"))
    assert written == [key + ".png" for key in keys]
    for path, row in zip(images, rows):
        assert row["labels"] == str(out / "labels" / (row["key"] + ".png"))
        labels = np.asarray(Image.open(row["labels"]))
        # Ray decodes with Pillow; the same pixels give the same labels.
        expected = segmenter.segment(np.asarray(Image.open(path)))
        np.testing.assert_array_equal(labels, expected.labels)
        assert (row["height"], row["width"], row["num_segments"]) == (
            expected.height, expected.width, expected.num_segments)
        # The actor's Rayon pool was capped to its 2 CPUs (RAYON_NUM_THREADS in its runtime_env).
        assert row["rayon_threads"] == 2


def test_results_are_keyed_relative_to_the_input_root():
    sys.path.insert(0, str(REPOSITORY / "examples" / "python"))
    try:
        import ray_segment
    finally:
        sys.path.pop(0)
    assert ray_segment.input_root("s3://bucket/photos/") == "bucket/photos"
    assert ray_segment.input_root("s3://bucket/photos/*.jpg") == "bucket/photos"
    assert ray_segment.input_root("s3://bucket/photos/x.jpg") == "bucket/photos"
    assert ray_segment.result_key("bucket/photos/a/x.jpg", "bucket/photos") == "a/x.jpg"
    assert ray_segment.rayon_threads(0.5) == 1
    assert ray_segment.rayon_threads(3.7) == 3
    assert ray_segment.actor_runtime_env(4) == {"env_vars": {"RAYON_NUM_THREADS": "4"}}
