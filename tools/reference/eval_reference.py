#!/usr/bin/env python3
"""Reference values for the evaluation harness (crates/diffseg/src/eval).

Builds a small synthetic COCO-Stuff-27 / Cityscapes dataset deterministically and
scores it independently of the Rust code: PIL for the nearest-neighbour label
resize, numpy for the confusion matrices, scipy.optimize.linear_sum_assignment
for the per-image Hungarian matching (the solver the paper's code calls), numpy
for ACC / mIoU (method section 7).

Writes two committed fixtures next to the Rust tests:
- eval_synthetic.json: the inputs. Per image: its id (and city), label size,
  channel count, raw label values (H*W, row-major; for a 3-channel file the
  Rust test writes channel 0 = label, channel 1 = (37 * label + 11) % 256,
  channel 2 = 255 - label), the prediction's PNG bit depth and a 64x64 grid of
  segment indices that the 512x512 prediction repeats in 8x8 blocks. Also
  nearest-neighbour index tables and random matrices for the assignment check.
  Per image also a 64x64 grid of predicted classes (`class_pred`, 0..26 or 255 =
  no class) for the open-vocabulary protocol (`eval --semantic`).
- eval_expected.json: per dataset and per image TP/FP/FN per class, labelled
  pixels, ACC, mIoU, per-class IoU (null = NaN); scipy's assignments of the
  random matrices; under "semantic", the same numbers for the class grids,
  compared pixel by pixel without matching (numpy's bincount).

Usage: python3 tools/reference/eval_reference.py [--out crates/diffseg/tests/fixtures/eval]
"""

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.optimize import linear_sum_assignment

REPO = Path(__file__).resolve().parents[2]
SIDE = 512
GRID = 64
N_CLASS = 27
COCO_MAP_JSON = REPO / "crates/diffseg/data/cocostuff27_fine_to_coarse.json"


def coco_class_of(raw):
    """Fine ids to coarse classes; 255 and unmapped ids become -1 (ignored)."""
    mapping = json.loads(COCO_MAP_JSON.read_text())["fine_index_to_coarse_index"]
    table = np.full(256, -1, dtype=np.int64)
    for fine, coarse in mapping.items():
        table[int(fine)] = coarse
    return table[raw]


def cityscapes_class_of(raw):
    """Label ids 7..33 to classes 0..26, everything else -1."""
    raw = raw.astype(np.int64)
    return np.where((raw >= 7) & (raw <= 33), raw - 7, -1)


def crop_resize_nearest(label):
    """Centre square crop, then a nearest resize to 512 with PIL (pixel centres)."""
    h, w = label.shape
    c = min(h, w)
    top, left = (h - c) // 2, (w - c) // 2
    image = Image.fromarray(label.astype(np.uint8), mode="L")
    image = image.crop((left, top, left + c, top + c)).resize((SIDE, SIDE), Image.NEAREST)
    resized = np.array(image)
    # The protocol's formula, floor((i + 0.5) * c / 512) clamped, must agree with PIL.
    index = np.minimum((2 * np.arange(SIDE) + 1) * c // (2 * SIDE), c - 1)
    assert (resized == label[top + index][:, left + index]).all()
    return resized


def expand_grid(grid):
    block = SIDE // GRID
    return np.asarray(grid, dtype=np.int64).repeat(block, 0).repeat(block, 1)


def confusion(classes, segments):
    """27 x max(27, K) counts; K = largest segment + 1 over all pixels."""
    columns = max(N_CLASS, int(segments.max()) + 1)
    keep = classes >= 0
    flat = classes[keep] * columns + segments[keep]
    return np.bincount(flat, minlength=N_CLASS * columns).reshape(N_CLASS, columns)


def score(hist):
    rows, cols = linear_sum_assignment(hist, maximize=True)
    assert (rows == np.arange(N_CLASS)).all()
    tp = hist[rows, cols]
    fn = hist.sum(1) - tp
    fp = hist[:, cols].sum(0) - tp
    return tp, fp, fn, cols


def tie_choice_matters(hist, rng):
    """True if another optimal assignment of `hist` gives other per-class FP."""
    _, fp, _, _ = score(hist)
    for _ in range(20):
        perm_rows = rng.permutation(hist.shape[0])
        perm_cols = rng.permutation(hist.shape[1])
        r, c = linear_sum_assignment(hist[perm_rows][:, perm_cols], maximize=True)
        rows, cols = perm_rows[r], perm_cols[c]
        cols = cols[np.argsort(rows)]
        tp = hist[np.arange(N_CLASS), cols]
        other_fp = hist[:, cols].sum(0) - tp
        if (other_fp != fp).any():
            return True
    return False


def make_label(rng, h, w, values, ignored_values, ignored_fraction):
    """Blocky regions of a few label values, some pixels set to ignored values."""
    by, bx = max(1, h // 4), max(1, w // 4)
    blocks = rng.choice(values, size=(h // by + 1, w // bx + 1))
    label = blocks.repeat(by, 0).repeat(bx, 1)[:h, :w].copy()
    noise = rng.random((h, w)) < 0.15
    label[noise] = rng.choice(values, size=noise.sum())
    ignored = rng.random((h, w)) < ignored_fraction
    label[ignored] = rng.choice(ignored_values, size=ignored.sum())
    return label.astype(np.uint8)


def make_prediction(rng, classes512, segments, stray_segment=None):
    """A 64x64 grid: each class maps to one or two of the segment indices
    `segments` (a count, or a list of the indices used), plus some noise."""
    used = np.arange(segments) if np.isscalar(segments) else np.asarray(segments)
    centre = classes512[SIDE // GRID // 2 :: SIDE // GRID, SIDE // GRID // 2 :: SIDE // GRID]
    table = rng.choice(used, size=(N_CLASS + 1, 2))
    pick = rng.integers(0, 2, size=(GRID, GRID))
    grid = table[np.where(centre >= 0, centre, N_CLASS), pick]
    noise = rng.random((GRID, GRID)) < 0.2
    grid[noise] = rng.choice(used, size=noise.sum())
    # Every segment index used appears, so K is what the case says.
    grid.reshape(-1)[: len(used)] = used
    if stray_segment is not None:
        # A segment seen only where the ground truth is ignored still widens the matrix.
        ignored = np.argwhere(centre < 0)
        assert len(ignored) > 0
        grid[tuple(ignored[0])] = stray_segment
    return grid


COCO_CASES = [
    # id, width, height, channels, prediction segments (K, or the indices used), PNG bits,
    # stray segment
    ("000000000139", 20, 16, 1, 40, 16, None),
    ("000000000724", 16, 24, 3, 5, 8, None),
    ("000000000785", 33, 27, 1, 12, 8, 30),
]
CITYSCAPES_CASES = [
    # K = 30 > 27 but only 6 segments used: absent classes get empty columns (NaN IoU).
    ("frankfurt", "frankfurt_000000_000294", 24, 20, 1, [0, 1, 2, 3, 4, 29], 16, None),
    ("frankfurt", "frankfurt_000001_000538", 40, 20, 1, 1, 8, None),
    ("lindau", "lindau_000001_000019", 18, 30, 1, 3, 8, None),
]


def build(rng):
    inputs = {"side": SIDE, "grid": GRID, "cocostuff27": [], "cityscapes": []}
    images = {"cocostuff27": [], "cityscapes": []}
    # COCO: a handful of fine ids (person, car, bus, wall-wood, sky-other, ...).
    coco_values = np.array([0, 2, 5, 176, 156, 105, 123, 181, 61])
    for image_id, w, h, channels, k, bits, stray in COCO_CASES:
        label = make_label(rng, h, w, coco_values, [255, 200, 190], 0.1)
        classes = coco_class_of(crop_resize_nearest(label))
        grid = make_prediction(rng, classes, k, stray)
        inputs["cocostuff27"].append(
            dict(id=image_id, width=w, height=h, channels=channels,
                 label=label.reshape(-1).tolist(), pred_bits=bits, pred=grid.reshape(-1).tolist())
        )
        images["cocostuff27"].append((image_id, classes, expand_grid(grid)))
    city_values = np.array([7, 8, 11, 21, 23, 24, 26, 33])
    for city, stem, w, h, channels, k, bits, stray in CITYSCAPES_CASES:
        label = make_label(rng, h, w, city_values, [0, 1, 4, 6, 34, 255], 0.1)
        classes = cityscapes_class_of(crop_resize_nearest(label))
        grid = make_prediction(rng, classes, k, stray)
        inputs["cityscapes"].append(
            dict(city=city, id=f"{stem}_leftImg8bit", width=w, height=h, channels=channels,
                 label=label.reshape(-1).tolist(), pred_bits=bits, pred=grid.reshape(-1).tolist())
        )
        images["cityscapes"].append((f"{stem}_leftImg8bit", classes, expand_grid(grid)))
    return inputs, images


def evaluate(images, rng, seen):
    tp = np.zeros(N_CLASS, dtype=np.int64)
    fp = np.zeros(N_CLASS, dtype=np.int64)
    fn = np.zeros(N_CLASS, dtype=np.int64)
    labelled = 0
    per_image = []
    ties_matter = False
    for image_id, classes, segments in images:
        hist = confusion(classes, segments)
        t, p, n, cols = score(hist)
        ties_matter |= tie_choice_matters(hist, rng)
        tp += t
        fp += p
        fn += n
        labelled += int(hist.sum())
        per_image.append(dict(id=image_id, columns=int(hist.shape[1]), matched=cols.tolist(),
                              tp=t.tolist(), fp=p.tolist(), fn=n.tolist(), labelled=int(hist.sum())))
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (tp + fp + fn)
    summary = dict(
        images=len(images), labelled=labelled,
        acc=float(tp.sum() / labelled), miou=float(np.nanmean(iou)),
        iou=[None if np.isnan(x) else float(x) for x in iou],
        tp=tp.tolist(), fp=fp.tolist(), fn=fn.tolist(), per_image=per_image,
    )
    absent = (tp + fn) == 0
    seen["a class without any pixel (NaN IoU)"] |= any(x is None for x in summary["iou"])
    seen["a class absent from the ground truth with false positives"] |= bool((absent & (fp > 0)).any())
    seen["an image whose tied optima differ in per-class FP"] |= ties_matter
    return summary


def make_class_prediction(rng, classes512):
    """A 64x64 grid of predicted classes: mostly the ground truth's class at the block's
    centre, else another class (often one absent from the image), or 255 (no class)."""
    centre = classes512[SIDE // GRID // 2 :: SIDE // GRID, SIDE // GRID // 2 :: SIDE // GRID]
    grid = np.where(centre >= 0, centre, rng.integers(0, N_CLASS, size=centre.shape))
    wrong = rng.random((GRID, GRID)) < 0.3
    grid[wrong] = rng.integers(0, N_CLASS, size=wrong.sum())
    none = rng.random((GRID, GRID)) < 0.05
    grid[none] = 255
    return grid


def evaluate_by_class(images):
    """The open-vocabulary protocol: per pixel, predicted class against ground truth."""
    tp = np.zeros(N_CLASS, dtype=np.int64)
    fp = np.zeros(N_CLASS, dtype=np.int64)
    fn = np.zeros(N_CLASS, dtype=np.int64)
    labelled = 0
    per_image = []
    for image_id, classes, predicted in images:
        keep = classes >= 0
        truth, guess = classes[keep], predicted[keep]
        named = guess < N_CLASS
        hist = np.bincount(truth[named] * N_CLASS + guess[named],
                           minlength=N_CLASS * N_CLASS).reshape(N_CLASS, N_CLASS)
        t = np.diag(hist)
        p = hist.sum(0) - t
        n = np.bincount(truth, minlength=N_CLASS) - t
        tp += t
        fp += p
        fn += n
        labelled += int(keep.sum())
        per_image.append(dict(id=image_id, tp=t.tolist(), fp=p.tolist(), fn=n.tolist(),
                              labelled=int(keep.sum())))
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (tp + fp + fn)
    return dict(
        images=len(images), labelled=labelled,
        acc=float(tp.sum() / labelled), miou=float(np.nanmean(iou)),
        iou=[None if np.isnan(x) else float(x) for x in iou],
        tp=tp.tolist(), fp=fp.tolist(), fn=fn.tolist(), per_image=per_image,
    )


def random_matrices(rng):
    cases = []
    shapes = [(27, 40), (27, 27), (27, 30), (5, 3), (3, 5), (8, 8), (12, 4), (1, 6), (6, 1)]
    for index in range(60):
        rows, cols = shapes[index % len(shapes)]
        if index % 3 == 0:
            weights = rng.integers(0, 1000, size=(rows, cols))
        else:
            # Sparse small counts: zero rows and many tied optima, as absent classes give.
            weights = rng.integers(0, 4, size=(rows, cols)) * (rng.random((rows, cols)) < 0.25)
        r, c = linear_sum_assignment(weights, maximize=True)
        cases.append(dict(rows=rows, columns=cols, weights=weights.reshape(-1).tolist(),
                          matched_rows=r.tolist(), matched_columns=c.tolist()))
    return cases


def nearest_tables():
    tables = []
    for c in [1, 3, 16, 20, 27, 480, 600, 1024, 1025, 2047]:
        source = np.arange(c, dtype=np.int32).reshape(1, c).repeat(2, 0)
        resized = np.array(Image.fromarray(source, mode="I").resize((SIDE, 2), Image.NEAREST))[0]
        tables.append(dict(source=c, indices=resized.tolist()))
    return tables


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "crates/diffseg/tests/fixtures/eval")
    args = parser.parse_args()
    rng = np.random.default_rng(20240527)
    inputs, images = build(rng)
    cases = random_matrices(rng)
    inputs["assignments"] = [
        {k: v for k, v in case.items() if not k.startswith("matched")} for case in cases
    ]
    inputs["nearest"] = nearest_tables()
    tie_rng = np.random.default_rng(1)
    seen = dict.fromkeys(
        ["a class without any pixel (NaN IoU)",
         "a class absent from the ground truth with false positives",
         "an image whose tied optima differ in per-class FP"], False)
    expected = {
        "cocostuff27": evaluate(images["cocostuff27"], tie_rng, seen),
        "cityscapes": evaluate(images["cityscapes"], tie_rng, seen),
        "assignments": [dict(matched_rows=c["matched_rows"], matched_columns=c["matched_columns"])
                        for c in cases],
    }
    # Class grids for the open-vocabulary protocol, from their own generator so that the
    # fixture's other values stay as they were.
    class_rng = np.random.default_rng(27)
    expected["semantic"] = {}
    for name in ("cocostuff27", "cityscapes"):
        by_class = []
        for entry, (image_id, classes, _) in zip(inputs[name], images[name]):
            grid = make_class_prediction(class_rng, classes)
            entry["class_pred"] = grid.reshape(-1).tolist()
            by_class.append((image_id, classes, expand_grid(grid)))
        expected["semantic"][name] = evaluate_by_class(by_class)
    # The cases the tests are meant to cover really occur.
    for case, occurs in seen.items():
        assert occurs, case
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "eval_synthetic.json").write_text(json.dumps(inputs, separators=(",", ":")) + "\n")
    (args.out / "eval_expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    for name in ("cocostuff27", "cityscapes"):
        e = expected[name]
        print(f"{name}: {e['images']} images, ACC {e['acc'] * 100:.3f}, mIoU {e['miou'] * 100:.3f}")
        e = expected["semantic"][name]
        print(f"{name} by class: ACC {e['acc'] * 100:.3f}, mIoU {e['miou'] * 100:.3f}")


if __name__ == "__main__":
    main()
