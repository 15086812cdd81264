"""Seconds per image of `segment` from Python and from Rust, on the same image in one run.

    python examples/python/binding_overhead.py WEIGHTS IMAGE [REPEATS]

Python times `Segmenter.segment(numpy array)` (input copy, GIL release, result
arrays included); Rust times `diffseg::Segmenter::segment` in the
segment_timing example of crates/diffseg-py. Runs alternate Rust, Python,
Rust, Python, ... so that a change of machine load hits both alike; each side
reports its median and its minimum (on a shared machine the minimum is the
least disturbed by other work).
"""

import json
import pathlib
import statistics
import subprocess
import sys
import time

import numpy as np
from PIL import Image

import diffseg

REPOSITORY = pathlib.Path(__file__).resolve().parents[2]


def rust_seconds(weights: str, image: str, repeats: int) -> list:
    command = ["cargo", "run", "--quiet", "--release", "--locked", "-p", "diffseg-py",
               "--example", "segment_timing", "--", weights, image, str(repeats)]
    output = subprocess.run(command, cwd=REPOSITORY, check=True, capture_output=True, text=True)
    return json.loads(output.stdout)


def python_seconds(segmenter: diffseg.Segmenter, pixels: np.ndarray, repeats: int) -> list:
    segmenter.segment(pixels)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        segmenter.segment(pixels)
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    weights, image = sys.argv[1], sys.argv[2]
    repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    pixels = np.asarray(Image.open(image).convert("RGB"))
    segmenter = diffseg.Segmenter(weights=weights, allow_download=False)
    rust, python = [], []
    rounds = 3
    for _ in range(rounds):
        rust += rust_seconds(weights, image, repeats)
        python += python_seconds(segmenter, pixels, repeats)
    print(f"image {image} ({pixels.shape[1]}x{pixels.shape[0]}), {rounds * repeats} calls each")
    for name, statistic in (("median", statistics.median), ("minimum", min)):
        rust_seconds_per_image, python_seconds_per_image = statistic(rust), statistic(python)
        print(f"{name}: rust {rust_seconds_per_image:.4f} s, python {python_seconds_per_image:.4f} s "
              f"per image, binding overhead {100 * (python_seconds_per_image / rust_seconds_per_image - 1):+.1f} %")


if __name__ == "__main__":
    main()
