"""COCO RLE fixtures from pycocotools: label maps as PNGs and, per label, the
compressed counts string `pycocotools.mask.encode` gives for `labels == label`.

crates/diffseg's test `coco_rle_matches_pycocotools` encodes the same masks and
decodes these strings. Regenerate with:

    pip install pycocotools numpy pillow
    python tools/reference/coco_rle_reference.py crates/diffseg/tests/fixtures/coco_rle
"""

import json
import pathlib
import sys

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask


def label_maps(rng: np.random.Generator) -> dict[str, np.ndarray]:
    maps = {
        "tiny": rng.integers(0, 3, size=(5, 7)),
        "row": (np.arange(300)[None, :] // 37) % 4,
        "column": (np.arange(300)[:, None] // 11) % 3,
        "single": np.zeros((9, 4), dtype=np.int64),
    }
    # Blobs: runs of every length, and differences of both signs between runs two apart.
    ys, xs = np.mgrid[0:61, 0:83]
    blobs = np.zeros((61, 83), dtype=np.int64)
    for label in range(1, 6):
        cy, cx, r = rng.integers(0, 61), rng.integers(0, 83), rng.integers(4, 25)
        blobs[(ys - cy) ** 2 + (xs - cx) ** 2 < r * r] = label
    maps["blobs"] = blobs
    # Runs past 2^15 and 2^20: numbers of several 5-bit groups.
    big = np.zeros((300, 400), dtype=np.int64)
    big[150:152, 390:392] = 1
    big[:, :2] = 2
    maps["big_runs"] = big
    return maps


def main(out: pathlib.Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261203)
    cases = []
    for name, labels in label_maps(rng).items():
        labels = labels.astype(np.uint8)
        Image.fromarray(labels, mode="L").save(out / f"{name}.png")
        encoded = {}
        for label in range(int(labels.max()) + 1):
            rle = coco_mask.encode(np.asfortranarray(labels == label))
            assert list(rle["size"]) == list(labels.shape)
            encoded[str(label)] = rle["counts"].decode("ascii")
        cases.append({"name": name, "height": labels.shape[0], "width": labels.shape[1], "counts": encoded})
    (out / "reference.json").write_text(json.dumps(cases, indent=1) + "\n")


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))
