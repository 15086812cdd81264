#!/usr/bin/env python3
"""DiffSeg's merge stage side by side, in one run: google/diffseg's segmentor.py (TensorFlow,
CPU) against `diffseg merge` as a whole process.

Input (both sides): the synthetic colour attention of tools/reference/diffseg_reference.py
(per-cell block-mean RGB of examples/images/chelsea.png plus position, T = 0.01) at 64/32/16/8,
one head each. It is aggregated into a 64x64 aggregate (4096 maps of 4096) and merged with the
paper's settings (tau 1.1 at every iteration, 16x16 anchors, 3 iterations, no refinement).

- segmentor.py: `DiffSeg([1.1] * 3, False, 16)` from a checkout of google/diffseg (not vendored:
  pass its path). Timed per call, in this process, after one untimed warm-up call (TF's first
  call builds its kernels): `segment` (aggregation + merging + 512x512 labels) and
  `generate_masks` alone on the aggregate it made. It imports scikit-learn for the refinement
  only; with refinement off a stand-in module is used when scikit-learn is not installed.
- ours: `diffseg merge ATTENTION --out LABELS.png --size 512` as a subprocess, wall time
  (process start, reading the file, aggregation, merging, labels, the PNG); `--baseline`
  times a second binary the same way, interleaved.

Each side runs --repeats times; the best is kept and every run is printed. The ratio reported
is segmentor `segment` (best) / our process (best). Nothing else should be running.

Run from the repository root, with TensorFlow (CPU) installed:
  python tools/bench/merge_side_by_side.py --segmentor /path/to/google-diffseg \
      [--diffseg target/release/diffseg] [--baseline OTHER] [--repeats 5]
"""
import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools/reference"))
import diffseg_reference as reference  # noqa: E402

TAU = [1.1, 1.1, 1.1]


def attention():
    """{side: [1, side², side²] float32}, the reference script's synthetic attention."""
    return {side: reference.attention_from_features(reference.cell_features(side))[None]
            for side in reference.SIDES}


def load_segmentor(checkout):
    """google/diffseg's DiffSeg class, from `checkout` (the repository root or its diffseg/)."""
    checkout = Path(checkout)
    package = checkout if (checkout / "segmentor.py").exists() else checkout / "diffseg"
    try:
        import sklearn.cluster  # noqa: F401
    except ImportError:
        # Only `refine=True` uses KMeans; refinement is off here.
        stand_in = types.ModuleType("sklearn.cluster")
        stand_in.KMeans = None
        sys.modules["sklearn"] = types.ModuleType("sklearn")
        sys.modules["sklearn.cluster"] = stand_in
    sys.path.insert(0, str(package))
    import segmentor
    return segmentor.DiffSeg(TAU, False, 16)


def time_segmentor(model, maps, repeats):
    weights = [maps[side] for side in reference.SIDES]
    model.segment(*[[w] for w in weights])  # warm-up: TF builds its kernels on the first call
    whole, merge_only = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        labels = model.segment(*[[w] for w in weights])[0]
        whole.append(time.perf_counter() - start)
        aggregate = model.aggregate_weights(weights)
        start = time.perf_counter()
        model.generate_masks(aggregate, model.kl_threshold, model.grid)
        merge_only.append(time.perf_counter() - start)
    return whole, merge_only, labels


def time_process(binary, attention_file, out, repeats):
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([binary, "merge", str(attention_file), "--out", str(out), "--size", "512"],
                       check=True, stdout=subprocess.DEVNULL)
        runs.append(time.perf_counter() - start)
    return runs


def segment_count(png):
    from PIL import Image
    return len(np.unique(np.asarray(Image.open(png))))


def commit():
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--segmentor", required=True, help="checkout of google/diffseg")
    parser.add_argument("--diffseg", default=str(ROOT / "target/release/diffseg"))
    parser.add_argument("--baseline", help="a second diffseg binary, timed the same way")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import tensorflow as tf
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    print(f"machine: {cpu}, {os.cpu_count()} CPUs; TensorFlow {tf.__version__}; commit {commit()}")

    maps = attention()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        attention_file = scratch / "attention.safetensors"
        save_file({f"self_attn.{side}": maps[side][0] for side in reference.SIDES},
                  str(attention_file))
        binaries = {"diffseg merge": args.diffseg}
        if args.baseline:
            binaries["baseline"] = args.baseline
        ours = {name: [] for name in binaries}
        for _ in range(args.repeats):  # interleaved, so that drift hits both alike
            for name, binary in binaries.items():
                ours[name] += time_process(binary, attention_file, scratch / f"{len(name)}.png", 1)
        counts = {name: segment_count(scratch / f"{len(name)}.png") for name in binaries}

        whole, merge_only, labels = time_segmentor(load_segmentor(args.segmentor), maps,
                                                   args.repeats)

    def show(name, runs):
        print(f"{name:<34} best {min(runs):7.3f} s   runs " + " ".join(f"{r:.3f}" for r in runs))

    show("segmentor.segment", whole)
    show("segmentor.generate_masks", merge_only)
    for name, runs in ours.items():
        show(f"{name} (process)", runs)
    print(f"segments: segmentor {len(np.unique(labels))}, "
          + ", ".join(f"{name} {count}" for name, count in counts.items()))
    for name, runs in ours.items():
        print(f"ratio segmentor.segment / {name}: {min(whole) / min(runs):.1f}x")


if __name__ == "__main__":
    main()
