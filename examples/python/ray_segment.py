"""Segment a folder of images with DiffSeg on Ray Data: one model per actor.

    python examples/python/ray_segment.py IMAGES --out OUT [--concurrency N] [--batch-size B]

Writes OUT/labels/<key>.png (pixel value = segment label, what `diffseg segment`
writes) for every image, where <key> is the image's path relative to IMAGES
(`a/x.png` → labels/a/x.png.png, `b/x.jpg` → labels/b/x.jpg.png: images with the
same name in different folders, or the same stem, never overwrite each other), and
OUT/manifest.jsonl with one line per image: the image, its key, its label PNG, its
size, its segment count and the Rayon threads of the actor that segmented it.

Each actor's Rayon pool, which the model computes on, gets as many threads as the
actor has CPUs (--cpus-per-actor): RAYON_NUM_THREADS is set in the actor's
environment before it starts, so actors never oversubscribe the cores.

Locally this starts a Ray instance of its own; on a cluster pass --address auto
(or run it with `ray job submit -- python ray_segment.py ...`). On a cluster,
IMAGES and OUT must be reachable from every node (a shared file system, or an
s3:// / gs:// URI for IMAGES), and every node needs the `diffseg` wheel and the
weights (--weights on a shared path, $DIFFSEG_WEIGHTS, or the Hugging Face cache).
See docs/python.md.
"""

import argparse
import glob
import json
import math
import os
import pathlib
import posixpath
import tempfile

import numpy as np
import ray

import diffseg


class SegmentActor:
    """Loads the model once, then segments batches of images."""

    def __init__(self, out: str, root: str, **segmenter_options):
        self.labels = pathlib.Path(out) / "labels"
        self.root = root
        # Set by the actor's runtime_env (actor_runtime_env) before the process started.
        self.threads = int(os.environ.get("RAYON_NUM_THREADS", "0"))
        self.segmenter = diffseg.Segmenter(**segmenter_options)

    def __call__(self, batch: dict) -> dict:
        # Images of different sizes arrive as an object array of H×W×C arrays.
        images = [np.asarray(image) for image in batch["image"]]
        results = self.segmenter.segment_batch(images)
        rows = {key: [] for key in
                ("image", "key", "labels", "height", "width", "num_segments", "rayon_threads")}
        for path, result in zip(batch["path"], results):
            key = result_key(path, self.root)
            target = self.labels / (key + ".png")
            target.parent.mkdir(parents=True, exist_ok=True)
            result.save_labels(target)  # atomic: a crash never leaves half a PNG
            rows["image"].append(path)
            rows["key"].append(key)
            rows["labels"].append(str(target))
            rows["height"].append(result.height)
            rows["width"].append(result.width)
            rows["num_segments"].append(result.num_segments)
            rows["rayon_threads"].append(self.threads)
        return {key: np.asarray(values) for key, values in rows.items()}


def input_root(images: str) -> str:
    """The folder results are keyed relative to, spelled as Ray spells the files' paths:
    IMAGES itself when it is a folder, else the folder of the file or glob it names.
    Ray names the files of `s3://bucket/prefix` as `bucket/prefix/...`."""
    remote = "://" in images
    location = images.split("://", 1)[1] if remote else os.path.abspath(images)
    location = location.rstrip("/")
    if remote:
        is_folder = not glob.has_magic(location) and not posixpath.splitext(location)[1]
    else:
        is_folder = os.path.isdir(location)
    if not is_folder:
        location = posixpath.dirname(location) if remote else os.path.dirname(location)
    while glob.has_magic(location):
        location = posixpath.dirname(location) if remote else os.path.dirname(location)
    return location


def result_key(path: str, root: str) -> str:
    """The image's path relative to the input root, `/`-separated: what names its results."""
    if "://" not in path and not path.startswith(root):
        path = os.path.abspath(path)
    if path.startswith(root.rstrip("/") + "/"):
        return path[len(root.rstrip("/")) + 1:].replace(os.sep, "/")
    return posixpath.basename(path)  # not under the root (cannot happen with Ray's listing)


def rayon_threads(cpus_per_actor: float) -> int:
    """The Rayon threads of an actor with that many CPUs: its whole cores, at least one."""
    return max(1, math.floor(cpus_per_actor))


def actor_runtime_env(cpus_per_actor: float) -> dict:
    """The actor's runtime environment: Rayon capped to the actor's CPUs. Rayon reads
    RAYON_NUM_THREADS once, when its pool starts, so it must be set in the environment
    the actor process starts with, not changed inside it."""
    return {"env_vars": {"RAYON_NUM_THREADS": str(rayon_threads(cpus_per_actor))}}


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
    parser.add_argument("--cpus-per-actor", type=float, default=1.0,
                        help="CPUs reserved per actor; its Rayon threads are capped to them")
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
    (args.out / "labels").mkdir(exist_ok=True)
    segmenter_options = dict(
        backend=args.backend,
        weights=args.weights,
        model=args.model,
        allow_download=not args.offline,
        tau=args.tau,
    )
    results = ray.data.read_images(args.images, include_paths=True).map_batches(
        SegmentActor,
        fn_constructor_kwargs=dict(out=str(args.out), root=input_root(args.images),
                                   **segmenter_options),
        concurrency=args.concurrency,
        batch_size=args.batch_size,
        num_cpus=args.cpus_per_actor,
        num_gpus=args.gpus_per_actor,
        runtime_env=actor_runtime_env(args.cpus_per_actor),
    )
    count = write_manifest(results.iter_rows(), args.out / "manifest.jsonl")
    print(f"{count} images segmented: labels in {args.out / 'labels'}, manifest {args.out / 'manifest.jsonl'}")


if __name__ == "__main__":
    main()
