#!/usr/bin/env python3
"""Reference values for DiffCut's evaluation protocol (`diffseg eval --protocol diffcut`).

PaulCouairon/DiffCut's eval_diffcut.py scores at 128x128: the label is centre-cropped
to a square of side min(H, W) - 1 (torchvision's CenterCrop, offsets rounded with
Python's round), resized to the input size with nearest-exact, then to 128x128 with
torch's legacy nearest (F.interpolate's default); each image's segments are matched to
classes with scipy's linear_sum_assignment (tools/utils.py: hungarian_matching).

This reuses the synthetic images of eval_reference.py (its eval_synthetic.json), gives
each a 128x128 prediction of its own, and writes eval_diffcut.json next to it: per
dataset and input size, the predictions, per-image TP/FP/FN and the totals. torch's
own F.interpolate does the resizes, so the Rust code is checked against the real thing.

Usage: python3 tools/reference/eval_diffcut_reference.py [--dir crates/diffseg/tests/fixtures/eval]
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from eval_reference import N_CLASS, cityscapes_class_of, coco_class_of

REPO = Path(__file__).resolve().parents[2]
MASK = 128
INPUT_SIZES = [1024, 200]


def diffcut_labels(label, input_size):
    """eval_diffcut.py's ground truth at 128x128, raw label values."""
    h, w = label.shape
    c = min(h, w) - 1
    top, left = int(round((h - c) / 2.0)), int(round((w - c) / 2.0))
    crop = torch.from_numpy(label[top:top + c, left:left + c].astype(np.float32))[None, None]
    resized = F.interpolate(crop, size=(input_size, input_size), mode="nearest-exact")
    resized = F.interpolate(resized, size=(MASK, MASK))
    return resized[0, 0].numpy().astype(np.int64)


def hungarian(classes, pred):
    """tools/utils.py's hungarian_matching for one image."""
    columns = max(N_CLASS, int(pred.max()) + 1)
    keep = (classes >= 0) & (classes < N_CLASS)
    hist = np.bincount(columns * classes[keep] + pred[keep],
                       minlength=N_CLASS * columns).reshape(N_CLASS, columns)
    rows, cols = linear_sum_assignment(hist, maximize=True)
    tp = hist[rows, cols]
    fn = hist.sum(1) - tp
    fp = hist[:, cols].sum(0) - np.diag(hist[:, cols])
    return tp, fp, fn, int(hist.sum())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=REPO / "crates/diffseg/tests/fixtures/eval")
    args = parser.parse_args()
    inputs = json.loads((args.dir / "eval_synthetic.json").read_text())
    rng = np.random.default_rng(20241203)
    out = {"mask_size": MASK, "cases": []}
    for dataset, class_of in (("cocostuff27", coco_class_of), ("cityscapes", cityscapes_class_of)):
        images = inputs[dataset]
        # One prediction per image: a few segments, blocky so that the matching matters.
        preds = []
        for image in images:
            k = int(rng.integers(3, 40))
            blocks = rng.integers(0, k, size=(MASK // 16, MASK // 16))
            pred = blocks.repeat(16, 0).repeat(16, 1)
            noise = rng.random((MASK, MASK)) < 0.1
            pred[noise] = rng.integers(0, k, size=noise.sum())
            preds.append(pred)
        for input_size in INPUT_SIZES:
            tp = np.zeros(N_CLASS, dtype=np.int64)
            fp = np.zeros(N_CLASS, dtype=np.int64)
            fn = np.zeros(N_CLASS, dtype=np.int64)
            labelled = 0
            per_image = []
            for image, pred in zip(images, preds):
                label = np.asarray(image["label"], dtype=np.uint8).reshape(image["height"], image["width"])
                classes = class_of(diffcut_labels(label, input_size))
                t, p, n, all_ = hungarian(classes, pred)
                tp, fp, fn, labelled = tp + t, fp + p, fn + n, labelled + all_
                per_image.append(dict(id=image["id"], tp=t.tolist(), fp=p.tolist(), fn=n.tolist(),
                                      labelled=all_))
            with np.errstate(invalid="ignore", divide="ignore"):
                iou = tp / (tp + fp + fn)
            out["cases"].append(dict(
                dataset=dataset, input_size=input_size,
                acc=float(tp.sum() / labelled), miou=float(np.nanmean(iou)),
                tp=tp.tolist(), fp=fp.tolist(), fn=fn.tolist(), labelled=labelled,
                per_image=per_image,
            ))
        out[dataset] = [pred.reshape(-1).tolist() for pred in preds]
    (args.dir / "eval_diffcut.json").write_text(json.dumps(out, separators=(",", ":")) + "\n")
    for case in out["cases"]:
        print(f"{case['dataset']} at input {case['input_size']}: ACC {case['acc'] * 100:.3f}, "
              f"mIoU {case['miou'] * 100:.3f}")


if __name__ == "__main__":
    main()
