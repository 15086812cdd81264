"""Side-by-side CPU timing: diffusers (PyTorch, fp32) vs our `diffseg segment`, in one run.

    python tools/bench/side_by_side.py --weights /work/sd15 [--image PATH] [--diffseg PATH]
                                       [--baseline PATH] [--repeats 2] [--json OUT.json] [--torch-only]

--weights is a diffusers SD 1.x folder (model_index.json, unet/, vae/, text_encoder/). Random
weights time the same as the real ones. A missing or incomplete folder makes the script print the
one-line command that writes a full-size random-weight SD 1.5 folder (~4.3 GB fp32, half a minute)
with tools/reference/sd_fullsize.py's build_models and save_weights (see WRITE_WEIGHTS below).

PyTorch side, in this process, torch's default thread count: the three models are loaded once
with `from_pretrained` ("load"), the UNet's attention processor is set to diffusers'
`AttnProcessor` (explicit softmax: the probabilities are materialised, as a DiffSeg capture
needs), then under `torch.no_grad()`, `--repeats` times: VAE encode of the 512x512 image
(latent = posterior mean x 0.18215), CLIP on the empty prompt (49406 then 76 x 49407), one UNet
pass at t = 300 on the clean latent (docs/method.md sections 1-2). Each stage keeps its
best time; forward = vae + clip + unet. No warm-up pass: with --repeats 1 the numbers include
first-call costs.

Our side: the CLI as a subprocess for the whole job, weights loading included,
`diffseg segment IMAGE --weights DIR --out TMP --overwrite --offline --timings FILE`, `--repeats`
times, wall time measured here; the per-stage seconds come from its `--timings` JSON (load,
decode, prepare, vae, clip, unet, merge, outputs, total, whichever it writes; its image count
is left out). A binary without `--timings` is timed by wall only.
Best of the repeats for each number. Our side runs first, before PyTorch loads its 4.3 GB.
--baseline BINARY times a second build the same way right after ours (before and after a change,
beside the same PyTorch run), as an extra column with its own ratio.

Target: our whole job (wall, load included) / PyTorch forward alone <= 1.0. Peak resident memory
of both sides is printed too (ours: the CLI process; PyTorch: this process, after its runs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor
from transformers import CLIPTextModel

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools/reference"))
import sd_common as common  # noqa: E402

IMAGE_FOLDERS = (REPO / "examples/images", REPO.parent / "shared/images")
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg"}
IMAGE_SIZE = 512
# Table rows; PyTorch has only load, vae, clip and unet. Stages either side lacks show "-".
STAGES = ("load", "decode", "prepare", "vae", "clip", "unet", "merge", "outputs", "total")
# The weights part of tools/reference/sd_fullsize.py (its own CLI goes on to a slow parity reference).
WRITE_WEIGHTS = (
    "import sys; from pathlib import Path; sys.path.insert(0, '{reference}'); import sd_fullsize as s; "
    "s.save_weights(Path('{out}'), *s.build_models('default'), write_ldm=False)"
)


def default_image() -> Path | None:
    for folder in IMAGE_FOLDERS:
        if folder.is_dir():
            images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            if images:
                return images[0]
    return None


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def git_commit() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def check_weights(weights: Path) -> None:
    needed = ["model_index.json"] + [f"{sub}/config.json" for sub in ("unet", "vae", "text_encoder")]
    missing = [name for name in needed if not (weights / name).is_file()]
    if missing:
        sys.exit(
            f"error: {weights} is not a diffusers SD folder (missing {', '.join(missing)}).\n"
            f"Write a random-weight full-size SD 1.5 one (~4.3 GB, half a minute) with:\n"
            f"    python -c \"{WRITE_WEIGHTS.format(reference=REPO / 'tools/reference', out=weights)}\""
        )


def run_cli_measured(command: list) -> tuple[str, float]:
    """Runs our CLI; its stdout and peak resident memory (GiB), or exit with its stderr if it fails."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, text=True)
        # wait4 gives this child's own peak RSS (RUSAGE_CHILDREN would be the largest of all runs).
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if process.returncode != 0:
            sys.exit(f"error: {' '.join(map(str, command))} failed (exit {process.returncode}):\n{err.read()}")
        return out.read(), usage.ru_maxrss / 2**20


def run_cli(command: list) -> str:
    """Runs our CLI; its stdout, or exit with its stderr if it fails."""
    return run_cli_measured(command)[0]


def run_ours(diffseg: Path, image: Path, weights: Path, repeats: int, name: str = "ours") -> dict:
    """`diffseg segment` as a subprocess, whole job; best wall time and best of each stage."""
    help_text = run_cli([diffseg, "segment", "--help"])
    has_timings = "--timings" in help_text
    if not has_timings:
        print("note: this diffseg has no --timings flag; timing its wall time only")
    walls, runs, peaks = [], [], []
    with tempfile.TemporaryDirectory(prefix="diffseg-bench-") as tmp:
        timings_file = Path(tmp) / "timings.json"
        command = [diffseg, "segment", image, "--weights", weights, "--out", Path(tmp) / "out", "--overwrite", "--offline"]
        if has_timings:
            command += ["--timings", timings_file]
        for i in range(repeats):
            start = time.perf_counter()
            peaks.append(run_cli_measured(command)[1])
            wall = time.perf_counter() - start
            walls.append(wall)
            if has_timings:
                runs.append(json.loads(timings_file.read_text()))
            print(f"{name}, run {i + 1}/{repeats}: wall {wall:.2f} s" + (f", {runs[-1]}" if runs else ""))
    best = {stage: min(run[stage] for run in runs) for stage in runs[0] if stage != "images"} if runs else {}
    return {"wall_s": walls, "best_wall_s": min(walls), "timings": runs, "best": best, "peak_rss_gb": max(peaks)}


def run_pytorch(image_path: Path, weights: Path, repeats: int) -> dict:
    """diffusers fp32 on the CPU: load once, then best of `repeats` for each stage."""
    start = time.perf_counter()
    vae = AutoencoderKL.from_pretrained(weights, subfolder="vae").eval()
    unet = UNet2DConditionModel.from_pretrained(weights, subfolder="unet").eval()
    text_encoder = CLIPTextModel.from_pretrained(weights, subfolder="text_encoder").eval()
    load = time.perf_counter() - start
    unet.set_attn_processor(AttnProcessor())
    print(f"PyTorch load: {load:.2f} s")

    image = common.crop_to_model_input(common.centre_crop_u8(image_path), IMAGE_SIZE)
    input_ids = common.empty_prompt_ids()
    timestep = torch.tensor([common.DIFFSEG_TIMESTEP], dtype=torch.int64)
    runs = []
    with torch.no_grad():
        for i in range(repeats):
            t0 = time.perf_counter()
            latent = vae.encode(image).latent_dist.mean * common.VAE_SCALING_FACTOR
            t1 = time.perf_counter()
            text_embedding = text_encoder(input_ids).last_hidden_state
            t2 = time.perf_counter()
            unet(latent, timestep, encoder_hidden_states=text_embedding)
            t3 = time.perf_counter()
            runs.append({"vae": t1 - t0, "clip": t2 - t1, "unet": t3 - t2})
            print(f"PyTorch, run {i + 1}/{repeats}: " + ", ".join(f"{k} {v:.2f} s" for k, v in runs[-1].items()))
    best = {stage: min(run[stage] for run in runs) for stage in ("vae", "clip", "unet")}
    best["load"] = load
    best["forward"] = best["vae"] + best["clip"] + best["unet"]
    peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"runs": runs, "best": best, "peak_rss_gb": peak_rss_gb}


def cell(value: float | None) -> str:
    return f"{value:10.2f}" if value is not None else f"{'-':>10}"


def print_report(report: dict) -> None:
    print()
    print(f"machine : {report['machine']}")
    print(f"torch   : {report['torch']} ({report['torch_threads']} threads)")
    print(f"diffseg : {report['diffseg_version']}, commit {report['commit']}")
    print(f"image   : {report['image']}, weights {report['weights']}, best of {report['repeats']}")
    print()
    torch_best = report["pytorch"]["best"]
    ours = report["ours"]
    baseline = report.get("baseline")
    sides = [("ours", ours)] + ([("baseline", baseline)] if baseline else [])
    print(f"{'stage (s)':<10}{'PyTorch':>10}" + "".join(f"{name:>10}" for name, _ in sides))
    for stage in STAGES:
        theirs = torch_best["load"] + torch_best["forward"] if stage == "total" else torch_best.get(stage)
        print(f"{stage:<10}{cell(theirs)}" + "".join(cell(side["best"].get(stage) if side else None) for _, side in sides))
    print(f"{'wall':<10}{cell(None)}" + "".join(cell(side["best_wall_s"] if side else None) for _, side in sides))
    print(f"(PyTorch total = load + forward; forward = vae + clip + unet = {torch_best['forward']:.2f} s)")
    rss = ", ".join(f"{name} {side['peak_rss_gb']:.2f} GiB" for name, side in sides if side)
    print(f"peak RSS: PyTorch {report['pytorch']['peak_rss_gb']:.2f} GiB (this process), {rss or 'ours -'}")
    if baseline:
        print(f"baseline: {report['baseline_binary']} ({report['baseline_version']}), ratio {report['baseline_ratio']:.3f}")
    if report["ratio"] is not None:
        verdict = "target met" if report["ratio"] <= 1.0 else "target NOT met"
        print(
            f"\nratio = ours wall, load included / PyTorch forward = "
            f"{ours['best_wall_s']:.2f} / {torch_best['forward']:.2f} = {report['ratio']:.3f}  ({verdict}: <= 1.0)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True, help="diffusers SD 1.x folder")
    parser.add_argument("--image", type=Path, default=default_image(), help="image (default: first of examples/images)")
    parser.add_argument("--diffseg", type=Path, default=REPO / "target/release/diffseg", help="our CLI binary")
    parser.add_argument(
        "--baseline", type=Path, help="a second diffseg binary (e.g. built at an earlier commit) timed in the same run"
    )
    parser.add_argument("--repeats", type=int, default=2, help="runs per side; the best is kept")
    parser.add_argument("--json", type=Path, help="write every number to this file")
    parser.add_argument("--torch-only", action="store_true", help="time the PyTorch side alone")
    args = parser.parse_args()

    check_weights(args.weights)
    if args.image is None or not args.image.is_file():
        sys.exit(f"error: no image at {args.image}; pass --image PATH")
    diffseg_version = "not run"
    if not args.torch_only:
        if not os.access(args.diffseg, os.X_OK):
            sys.exit(
                f"error: no diffseg binary at {args.diffseg}; build it with "
                f"`cargo build --release -p diffseg-cli`, pass --diffseg PATH, or --torch-only"
            )
        diffseg_version = run_cli([args.diffseg, "--version"]).strip()
        print(diffseg_version)

    report = {
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "diffseg_version": diffseg_version,
        "commit": git_commit(),
        "image": str(args.image),
        "weights": str(args.weights),
        "repeats": args.repeats,
    }
    report["ours"] = None if args.torch_only else run_ours(args.diffseg, args.image, args.weights, args.repeats)
    if args.baseline and not args.torch_only:
        report["baseline_binary"] = str(args.baseline)
        report["baseline_version"] = run_cli([args.baseline, "--version"]).strip()
        report["baseline"] = run_ours(args.baseline, args.image, args.weights, args.repeats, "baseline")
    report["pytorch"] = run_pytorch(args.image, args.weights, args.repeats)
    forward = report["pytorch"]["best"]["forward"]
    report["ratio"] = report["ours"]["best_wall_s"] / forward if report["ours"] else None
    if report.get("baseline"):
        report["baseline_ratio"] = report["baseline"]["best_wall_s"] / forward
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
