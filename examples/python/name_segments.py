"""Name the DiffSeg segments of images from a vocabulary, with the model's own cross-attention.

    python examples/python/name_segments.py IMAGE... [--vocabulary "sky,person,tree"]
        [--top-k 3] [--weights PATH] [--tokenizer FOLDER] [--tau T] [--out DIR]

For each image, prints its segments, largest first: label, share of the image, best name
with its score, and the runners-up. With --out, also writes for each image
DIR/<stem>.names.png, whose pixel value is the vocabulary index of its segment's name (the
segments of one name merged: a semantic map), and DIR/<stem>.names.json with the
vocabulary and each segment's names. Existing files are never overwritten.

The vocabulary is comma-separated entries or a preset (coco-stuff-27, cityscapes-27). The
model reads it with its own CLIP tokenizer (the model folder's tokenizer/, or --tokenizer
for a single-file checkpoint). Names are a hint about what a segment is, not a semantic
segmentation: see docs/method.md section 10 for how they are computed and their limit.
"""

import argparse
import json
import pathlib
import sys

import numpy as np
from PIL import Image

import diffseg


def name_map(result, vocabulary):
    """Each pixel's vocabulary index: the index of its segment's best name."""
    index_of_segment = np.array([vocabulary.index(segment["name"]) for segment in result.segments],
                                dtype=np.uint16)
    return index_of_segment[result.labels]


def print_segments(image, result):
    print(f"{image}: {result.num_segments} segments")
    pixels = result.width * result.height
    for segment in sorted(result.segments, key=lambda s: -s["area"]):
        others = ", ".join(f"{name} {score:.3f}" for name, score in segment["names"][1:])
        print(f"  {segment['label']:3d}  {100 * segment['area'] / pixels:5.1f} %  "
              f"{segment['name']} ({segment['name_score']:.3f})" + (f"  then {others}" if others else ""))


def write_outputs(out, image, result, vocabulary):
    stem = pathlib.Path(image).stem
    png, report = out / f"{stem}.names.png", out / f"{stem}.names.json"
    for path in (png, report):
        if path.exists():
            sys.exit(f"{path} exists: pass another --out folder")
    indices = name_map(result, vocabulary)
    mode = "L" if len(vocabulary) <= 256 else "I;16"
    Image.fromarray(indices.astype(np.uint8 if mode == "L" else np.uint16), mode=mode).save(png)
    segments = [{key: segment[key] for key in ("label", "area", "name", "name_score", "names")}
                for segment in result.segments]
    report.write_text(json.dumps({"image": str(image), "vocabulary": vocabulary,
                                  "segments": segments}, indent=1) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--vocabulary", default="coco-stuff-27",
                        help="comma-separated entries, or a preset (default: coco-stuff-27)")
    parser.add_argument("--top-k", type=int, default=3, help="best names kept per segment")
    parser.add_argument("--weights", help="SD 1.x folder or checkpoint (default: discovered)")
    parser.add_argument("--tokenizer", help="CLIP tokenizer folder (vocab.json, merges.txt)")
    parser.add_argument("--tau", type=float, help="merge threshold (default: the paper's)")
    parser.add_argument("--out", type=pathlib.Path, help="write <stem>.names.png/.json here")
    args = parser.parse_args()

    options = {"vocabulary": args.vocabulary, "top_k": args.top_k}
    for key in ("weights", "tokenizer", "tau"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    segmenter = diffseg.Segmenter(**options)
    vocabulary = None
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    for image in args.images:
        result = segmenter.segment(image)
        print_segments(image, result)
        if args.out is not None:
            # The entries as the segmenter read them (a preset's class names, or the list).
            vocabulary = vocabulary or segmenter.vocabulary
            write_outputs(args.out, image, result, vocabulary)


if __name__ == "__main__":
    main()
