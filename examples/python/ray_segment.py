"""Segment a folder of images with DiffSeg on Ray Data: one model per actor.

    python examples/python/ray_segment.py IMAGES --out OUT [--concurrency N] [--batch-size B]

Writes OUT/labels/<name>.png (grey PNG, pixel value = segment label, what
`diffseg segment` writes) for every image, and OUT/manifest.jsonl with one line
per image: the image, its label PNG, its size and segment count.

Locally this starts a Ray instance of its own; on a cluster pass --address auto
(or run it with `ray job submit -- python ray_segment.py ...`). On a cluster,
IMAGES and OUT must be reachable from every node (a shared file system, or an
s3:// / gs:// URI for IMAGES), and every node needs the `diffseg` wheel and the
weights (--weights on a shared path, $DIFFSEG_WEIGHTS, or the Hugging Face cache).
See docs/python.md.
"""

import argparse
import json
import os
import pathlib
import tempfile

import numpy as np
import ray

import diffseg


class SegmentActor:
    """Loads the model once, then segments batches of images."""

    def __init__(self, out: str, **segmenter_options):
        self.labels = pathlib.Path(out) / "labels"
        self.labels.mkdir(parents=True, exist_ok=True)
        self.segmenter = diffseg.Segmenter(**segmenter_options)

    def __call__(self, batch: dict) -> dict:
        # Images of different sizes arrive as an object array of H×W×C arrays.
        images = [np.asarray(image) for image in batch["image"]]
        results = self.segmenter.segment_batch(images)
        rows = {"image": [], "labels": [], "height": [], "width": [], "num_segments": []}
        for path, result in zip(batch["path"], results):
            target = self.labels / (label_name(path) + ".png")
            result.save_labels(target)  # atomic: a crash never leaves half a PNG
            rows["image"].append(path)
            rows["labels"].append(str(target))
            rows["height"].append(result.height)
            rows["width"].append(result.width)
            rows["num_segments"].append(result.num_segments)
        return {key: np.asarray(values) for key, values in rows.items()}


def label_name(path: str) -> str:
    """The label PNG's name: the image's file name without its extension."""
    return pathlib.PurePath(path).stem


def write_manifest(rows, path: pathlib.Path) -> int:
    """Writes the rows as JSON lines, sorted by image, atomically; returns how many."""
    rows = sorted(rows, key=lambda row: row["image"])
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as file:
        for row in rows:
            file.write(json.dumps({key: to_json(value) for key, value in row.items()}) + "\n")
    os.replace(file.name, path)
    return len(rows)


def to_json(value):
    return value.item() if isinstance(value, np.generic) else value


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", help="folder, file, glob or s3:// URI of images")
    parser.add_argument("--out", required=True, type=pathlib.Path)
    parser.add_argument("--concurrency", type=int, default=1, help="actors, one model each")
    parser.add_argument("--batch-size", type=int, default=1, help="images per model pass")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0)
    parser.add_argument("--gpus-per-actor", type=float, default=0.0, help="e.g. 1 with --backend cuda")
    parser.add_argument("--address", help="Ray cluster to join (`auto` on a cluster node)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance")
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--weights", help="diffusers folder or .safetensors file")
    parser.add_argument("--model", default=diffseg.DEFAULT_MODEL)
    parser.add_argument("--offline", action="store_true", help="never download weights")
    parser.add_argument("--tau", type=lambda text: [float(value) for value in text.split(",")],
                        help="KL threshold: one, or one per iteration, comma-separated (default 1.1)")
    args = parser.parse_args(argv)

    ray.init(address=args.address, num_cpus=args.num_cpus)
    args.out.mkdir(parents=True, exist_ok=True)
    segmenter_options = dict(
        backend=args.backend,
        weights=args.weights,
        model=args.model,
        allow_download=not args.offline,
        tau=args.tau,
    )
    results = ray.data.read_images(args.images, include_paths=True).map_batches(
        SegmentActor,
        fn_constructor_kwargs=dict(out=str(args.out), **segmenter_options),
        concurrency=args.concurrency,
        batch_size=args.batch_size,
        num_cpus=args.cpus_per_actor,
        num_gpus=args.gpus_per_actor,
    )
    count = write_manifest(results.iter_rows(), args.out / "manifest.jsonl")
    print(f"{count} images segmented: labels in {args.out / 'labels'}, manifest {args.out / 'manifest.jsonl'}")


if __name__ == "__main__":
    main()
