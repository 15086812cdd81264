#!/usr/bin/env python3
"""DiffSeg merge stage: reference implementation and fixture writer for diffseg-core.

The algorithm functions below (`aggregate_weights`, `kl_float16`, `kl_float64`,
`mask_merge_iteration0`, `mask_merge_greedy`, `upsample_argmax`) are a line-by-line numpy
equivalent of the authors' TensorFlow code, google/diffseg `diffseg/segmentor.py`
(class DiffSeg: aggregate_weights, KL, mask_merge, generate_masks), written from reading
it; none of their code is copied. TF ops are replaced by numpy with the same semantics:
- `tf.keras.layers.UpSampling2D(interpolation="bilinear")` is `tf.image.resize` bilinear
  with half-pixel centres and no antialiasing: an interpolation-matrix product here,
  checked against torch `interpolate(mode="bilinear", align_corners=False)` below.
- Iteration 0 casts anchors and maps to float16 and computes log, difference and products
  in float16 (numpy, like TF on CPU, evaluates half ops in float32 and rounds each result
  to half); the sums over 4096 values accumulate in float32 and are rounded to half, and the
  threshold is compared in half (1.1 becomes 1.099609375).
- Iterations 1.. compute KL in float64 (the proposals are float64 numpy arrays there).
- The upsampling before argmax runs in float32 (Keras layers compute in float32).

Input: synthetic but structured attention. For each latent side r in 64/32/16/8, every
cell gets a feature (mean RGB of its block of a real photo, plus its scaled position);
attention[q, k] = (1 - ε) softmax_k(-|f_q - f_k|² / T) + ε / r², computed in float32 (the
uniform floor ε keeps every value above float16's smallest subnormal, as in real SD
attention, so the reference's float16 KL has no 0·log 0 NaN here). The features are
committed, so the Rust tests rebuild the same attention.

Run from the repository root:  python3 tools/reference/diffseg_reference.py
Writes crates/diffseg-core/tests/fixtures/{merge.safetensors, merge.json, labels_*.png,
resample.safetensors}. Pass --time to time the reference merge stage for docs/benchmarks.md.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "crates/diffseg-core/tests/fixtures"
IMAGE = ROOT / "examples/images/chelsea.png"
SIDES = [64, 32, 16, 8]
TEMPERATURE = 0.01
UNIFORM_FLOOR = 0.01
POSITION_SCALE = 0.5
TAU = 1.1
ANCHORS = 16
ITERATIONS = 3


# ---------------------------------------------------------------- synthetic attention
def cell_features(side):
    """[side*side, 5] float32: block-mean RGB in [0, 1] and (row, column) * POSITION_SCALE / side."""
    image = Image.open(IMAGE).convert("RGB")
    crop = min(image.size)
    left, top = (image.width - crop) // 2, (image.height - crop) // 2
    image = image.crop((left, top, left + crop, top + crop)).resize((side, side), Image.BOX)
    rgb = np.asarray(image, dtype=np.float32).reshape(-1, 3) / np.float32(255)
    rows, columns = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    position = np.stack([rows.reshape(-1), columns.reshape(-1)], 1).astype(np.float32)
    position *= np.float32(POSITION_SCALE / side)
    return np.concatenate([rgb, position], 1).astype(np.float32)


def attention_from_features(features):
    """(1 - ε) softmax_k(-|f_q - f_k|² / T) + ε / n in float32, the formula the Rust tests use."""
    distance = np.zeros((features.shape[0], features.shape[0]), np.float32)
    for channel in range(features.shape[1]):
        difference = features[:, None, channel] - features[None, :, channel]
        distance += difference * difference
    logits = -distance / np.float32(TEMPERATURE)
    logits -= logits.max(1, keepdims=True)
    weights = np.exp(logits)
    probs = weights / weights.sum(1, keepdims=True)
    floor = np.float32(UNIFORM_FLOOR)
    return (probs * (np.float32(1) - floor) + floor / np.float32(features.shape[0])).astype(np.float32)


# ---------------------------------------------------------------- resampling
def interpolation_matrix(in_size, out_size):
    """[out, in] half-pixel bilinear weights (source clamped at 0, upper index at the end)."""
    matrix = np.zeros((out_size, in_size), np.float64)
    scale = in_size / out_size
    for out in range(out_size):
        source = max((out + 0.5) * scale - 0.5, 0.0)
        lower = min(int(np.floor(source)), in_size - 1)
        upper = min(lower + 1, in_size - 1)
        weight = source - lower
        matrix[out, lower] += 1 - weight
        matrix[out, upper] += weight
    return matrix


def resize_bilinear(maps, out_height, out_width):
    """[n, h, w] -> [n, out_height, out_width] in float32 (UpSampling2D / tf.image.resize)."""
    rows = interpolation_matrix(maps.shape[1], out_height).astype(np.float32)
    columns = interpolation_matrix(maps.shape[2], out_width).astype(np.float32)
    return np.matmul(rows, maps.astype(np.float32) @ columns.T).astype(np.float32)


# ---------------------------------------------------------------- the authors' algorithm
def weight_ratio(weight_list):
    sizes = [np.sqrt(weights.shape[-2]) for weights in weight_list]
    return np.array(sizes) / np.sum(sizes)


def aggregate_weights(weight_list):
    """segmentor.aggregate_weights: [heads, r², r²] per resolution -> [64, 64, 64, 64] float64."""
    ratios = weight_ratio(weight_list)
    aggregate = np.zeros((64, 64, 64, 64))
    for index, weights in enumerate(weight_list):
        size = int(np.sqrt(weights.shape[-1]))
        ratio = 64 // size
        weights = weights.mean(0).reshape(-1, size, size)
        weights = resize_bilinear(weights, 64, 64).reshape(size, size, 64, 64)
        weights = weights / weights.sum((2, 3), keepdims=True, dtype=np.float32)
        weights = np.repeat(np.repeat(weights, ratio, axis=0), ratio, axis=1)
        # A float32 tensor times a float64 scalar stays float32 in TF; the sum is float64.
        aggregate += (weights * np.float32(ratios[index])).astype(np.float64)
    return aggregate


def anchor_grid(points):
    segment = 63 // (points - 1)
    total = segment * (points - 1)
    start = (63 - total) // 2
    axis = np.linspace(start, total + start, points)
    rows, columns = np.meshgrid(axis, axis, indexing="ij")
    return np.concatenate([rows.reshape(-1, 1), columns.reshape(-1, 1)], -1).astype(int)


def half(values):
    """Rounds float32 values to float16 and back: numpy's (and TF CPU's) half arithmetic is
    the float32 operation rounded to half, so this emulates it at float32 speed."""
    return values.astype(np.float16).astype(np.float32)


def kl_float16(anchors, maps):
    """segmentor.KL on float16 inputs: anchors [a, n], maps [m, n] -> [a, m] float16."""
    anchors, maps = half(anchors.astype(np.float32)), half(maps.astype(np.float32))
    with np.errstate(divide="ignore", invalid="ignore"):
        log_maps = half(np.log(maps))
        log_anchors = half(np.log(anchors))
        result = np.empty((anchors.shape[0], maps.shape[0]), np.float16)
        for row, anchor in enumerate(anchors):
            quotient = half(log_anchors[row][None, :] - log_maps)
            kl_1 = half(half(anchor[None, :] * quotient).sum(-1)) / np.float32(2)
            kl_2 = -half(half(maps * quotient).sum(-1)) / np.float32(2)
            result[row] = (half(kl_1) + half(kl_2)).astype(np.float16)
    return result


def kl_exact(anchors, maps):
    """Symmetric KL in float64 by matrix products (the same values as kl_float64 to ~1e-13),
    for the float64 variant of iteration 0 and the values the Rust tests compare with."""
    log_anchors, log_maps = np.log(anchors), np.log(maps)
    own_anchors = (anchors * log_anchors).sum(1)[:, None]
    own_maps = (maps * log_maps).sum(1)[None, :]
    return (own_anchors + own_maps - anchors @ log_maps.T - log_anchors @ maps.T) / 2


def kl_float64(anchors, maps):
    """segmentor.KL in float64 (iterations 1..)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        log_anchors, log_maps = np.log(anchors), np.log(maps)
        result = np.empty((anchors.shape[0], maps.shape[0]))
        for row in range(anchors.shape[0]):
            quotient = log_anchors[row][None, :] - log_maps
            result[row] = (anchors[row][None, :] * quotient).sum(-1) / 2 - (maps * quotient).sum(-1) / 2
    return result


def mask_merge_iteration0(aggregate, grid, tau, precision):
    """segmentor.mask_merge(iter=0): returns the [256, 4096] match mask and the proposals."""
    maps = aggregate.reshape(4096, 4096)
    anchors = aggregate[grid[:, 0], grid[:, 1]].reshape(-1, 4096)
    if precision == "float16":
        matches = kl_float16(anchors, maps) < np.float16(tau)
    else:
        matches = kl_exact(anchors, maps) < tau
    weights = matches.astype(np.float64)
    proposals = weights @ maps / weights.sum(1, keepdims=True)
    return matches, proposals


def mask_merge_greedy(proposals, tau):
    """segmentor.mask_merge(iter>0): greedy walk; returns groups and their means."""
    kl = kl_float64(proposals, proposals)
    matched, groups, merged = set(), [], []
    for index in range(len(proposals)):
        if index in matched:
            continue
        matched.add(index)
        below = kl[index] < tau
        if below.sum() > 0:
            members = np.arange(len(proposals))[below]
            matched.update(members.tolist())
            groups.append(members.tolist())
            merged.append(proposals[below].mean(0))
    return groups, np.array(merged)


def upsample_argmax(proposals, size=512):
    """segmentor.generate_masks: ×8 bilinear upsample (float32), argmax over proposals."""
    upsampled = resize_bilinear(proposals.reshape(-1, 64, 64), size, size)
    return upsampled.argmax(0).astype(np.uint8)


def run_merge(aggregate, precision):
    """generate_masks without refinement; returns per-iteration details."""
    grid = anchor_grid(ANCHORS)
    matches, proposals = mask_merge_iteration0(aggregate, grid, TAU, precision)
    steps = [proposals]
    groups = []
    for _ in range(1, ITERATIONS):
        iteration_groups, proposals = mask_merge_greedy(proposals, TAU)
        groups.append(iteration_groups)
        steps.append(proposals)
    return matches, steps, groups, upsample_argmax(proposals)


# ---------------------------------------------------------------- fixtures
def pack(mask):
    return np.packbits(mask.astype(np.uint8), axis=-1)


def resample_fixture(rng):
    import torch

    tensors = {}
    cases = [(5, 7, 10, 14), (5, 7, 3, 4), (8, 8, 64, 64), (6, 9, 8, 21), (16, 16, 128, 128)]
    for number, (h, w, out_h, out_w) in enumerate(cases):
        channels = 1 if h == 16 else 3
        source = rng.random((channels, h, w), dtype=np.float32)
        expected = torch.nn.functional.interpolate(
            torch.from_numpy(source)[None], size=(out_h, out_w), mode="bilinear", align_corners=False
        )[0].numpy()
        assert np.allclose(expected, resize_bilinear(source, out_h, out_w), atol=1e-6)
        tensors[f"case{number}.input"] = source
        tensors[f"case{number}.expected"] = np.ascontiguousarray(expected)
    save_file(tensors, str(FIXTURES / "resample.safetensors"))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--time", action="store_true", help="time aggregation + merging, write no fixtures")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    features = {side: cell_features(side) for side in SIDES}
    attention = [attention_from_features(features[side])[None] for side in SIDES]

    if args.time:
        for precision in ["float16", "float64"]:
            start = time.perf_counter()
            aggregate = aggregate_weights(attention)
            aggregated = time.perf_counter()
            run_merge(aggregate, precision)
            print(f"iteration-0 KL in {precision}: aggregation {aggregated - start:.2f} s, "
                  f"aggregation + 3 iterations + labels {time.perf_counter() - start:.2f} s")
        return

    FIXTURES.mkdir(parents=True, exist_ok=True)
    resample_fixture(np.random.default_rng(1))
    aggregate = aggregate_weights(attention)
    maps = aggregate.reshape(4096, 4096)
    print("aggregate min", maps.min(), "min in float16", maps.astype(np.float16).min())

    matches16, steps16, groups16, labels16 = run_merge(aggregate, "float16")
    matches64, steps64, groups64, labels64 = run_merge(aggregate, "float64")
    grid = anchor_grid(ANCHORS)
    anchors = maps[grid[:, 0] * 64 + grid[:, 1]]
    kl_values = kl_exact(anchors, maps)
    differ = matches16 != matches64
    margin = np.abs(kl_values[differ] - TAU)
    print(f"iteration 0: float16 vs float64 KL masks differ in {differ.sum()} of {differ.size} "
          f"anchor-cell pairs ({differ.any(1).sum()} of 256 anchors); exact KL of those within "
          f"{margin.max() if differ.any() else 0:.4f} of tau")
    print("segments float16:", len(np.unique(labels16)), "float64:", len(np.unique(labels64)),
          "pixels differing:", int((labels16 != labels64).sum()))

    samples = 4096
    agg_rows = rng.integers(0, 4096, samples)
    agg_columns = rng.integers(0, 4096, samples)
    kl_anchor = rng.integers(0, 256, samples)
    kl_cell = rng.integers(0, 4096, samples)
    tensors = {f"features.{side}": features[side] for side in SIDES}
    tensors.update({
        "aggregate.rows": agg_rows.astype(np.int32),
        "aggregate.columns": agg_columns.astype(np.int32),
        "aggregate.values": maps[agg_rows, agg_columns],
        "kl.anchors": kl_anchor.astype(np.int32),
        "kl.cells": kl_cell.astype(np.int32),
        "kl.values": kl_values[kl_anchor, kl_cell],
        "matches.float16": pack(matches16),
        "matches.float64": pack(matches64),
    })
    for name, steps in [("float16", steps16), ("float64", steps64)]:
        for iteration, proposals in enumerate(steps):
            rows = rng.integers(0, proposals.shape[0], 512)
            columns = rng.integers(0, 4096, 512)
            tensors[f"proposals.{name}.{iteration}.rows"] = rows.astype(np.int32)
            tensors[f"proposals.{name}.{iteration}.columns"] = columns.astype(np.int32)
            tensors[f"proposals.{name}.{iteration}.values"] = proposals[rows, columns]
    save_file(tensors, str(FIXTURES / "merge.safetensors"))
    Image.fromarray(labels16).save(FIXTURES / "labels_float16.png")
    Image.fromarray(labels64).save(FIXTURES / "labels_float64.png")
    meta = {
        "source": "tools/reference/diffseg_reference.py",
        "image": str(IMAGE.relative_to(ROOT)),
        "temperature": TEMPERATURE,
        "uniform_floor": UNIFORM_FLOOR,
        "tau": TAU,
        "anchors": ANCHORS,
        "iterations": ITERATIONS,
        "groups": {"float16": groups16, "float64": groups64},
        "proposal_counts": {"float16": [len(s) for s in steps16], "float64": [len(s) for s in steps64]},
        "float16_discrepancy": {
            "pairs_differing": int(differ.sum()),
            "pairs": int(differ.size),
            "anchors_differing": int(differ.any(1).sum()),
            "max_abs_exact_kl_minus_tau": float(margin.max()) if differ.any() else 0.0,
            "label_pixels_differing": int((labels16 != labels64).sum()),
        },
    }
    (FIXTURES / "merge.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
