"""Side-by-side CPU timing of DiffCut's whole job: DiffCut's own pipeline on PyTorch (fp32, CPU) vs
our `diffseg segment --method diffcut`, in one run on one machine, on the same weights and image.

    python tools/bench/diffcut_side_by_side.py --weights /work/sd15 --diffcut DIFFCUT_CHECKOUT
        [--image PATH] [--diffseg PATH] [--input-size 1024] [--repeats 2] [--json OUT.json]

--weights is a diffusers SD 1.x folder (see side_by_side.py: random weights time the same as real
ones; a missing folder makes it print the command that writes one). --diffcut is a checkout of
PaulCouairon/DiffCut (not vendored): its `diffcut/recursive_normalized_cut.py` and `tools/utils.py`
are imported from there, with "cuda" made "cpu" in the first (its only change).

PyTorch side, in this process, torch's default thread count. DiffCut's `tools/ldm.py` loads a hub
pipeline in fp16 on CUDA, so its few lines are re-implemented here, faithfully, on the CPU in fp32
(autocast to fp16 is a CUDA feature it asks for; on the CPU its `torch.autocast(device_type='cuda')`
changes nothing): the models from `--weights` ("load"; the scheduler is DDIM "trailing" with SD
1.x's schedule, as `build_ldm_from_cfg` makes it); the image as its data loader reads it (RGB / 255,
centre square of side min(H, W) - 1, bilinear resize to the input size without antialiasing),
then `LdmExtractor.forward`: the empty prompt through CLIP, the latent (2x - 1, posterior mean x
scaling), noise from `torch.Generator().manual_seed(42)`, `scheduler.add_noise` at t = 50, a
forward hook on `down_blocks[-2].attentions[-1].transformer_blocks[-1].attn1` and the whole UNet
call (DiffCut runs every block; only the hooked output is used); then `DiffCut().generate_masks`
(tau 0.5, alpha 10, 128 x 128 masks) on the hooked output. Best of `--repeats` per stage.

Our side: `diffseg segment IMAGE --method diffcut --input-size N --weights DIR --out TMP
--overwrite --offline --timings FILE` as a subprocess, wall time measured here (weights loading,
image decoding and the label PNG included), best of `--repeats`, per-stage seconds from --timings.
The image goes in as it is with `--fit center-crop` (our crop is min(H, W), DiffCut's min(H, W) - 1:
one pixel, no difference in cost).

Target: ours (wall, load included) <= DiffCut's (load + forward + cut): ratio <= 1.0.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from PIL import Image
from transformers import CLIPTextModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
import side_by_side as sbs  # noqa: E402

common = sbs.common
STEP = 50
TAU = 0.5
ALPHA = 10
MASK = 128
# SD 1.x's scheduler configuration (scheduler/scheduler_config.json of the published models).
SD_SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


def import_diffcut(checkout: Path):
    """DiffCut's `DiffCut` class from a checkout, "cuda" made "cpu" (its code hard-codes CUDA)."""
    tools = types.ModuleType("tools")
    tools.__path__ = [str(checkout / "tools")]
    sys.modules["tools"] = tools
    spec = importlib.util.spec_from_file_location("tools.utils", checkout / "tools/utils.py")
    utils = importlib.util.module_from_spec(spec)
    sys.modules["tools.utils"] = utils
    spec.loader.exec_module(utils)
    source = (checkout / "diffcut/recursive_normalized_cut.py").read_text().replace('"cuda"', '"cpu"')
    module = types.ModuleType("recursive_normalized_cut")
    exec(compile(source, str(checkout / "diffcut/recursive_normalized_cut.py"), "exec"), module.__dict__)
    return module.DiffCut


def load_image(path: Path, size: int) -> torch.Tensor:
    """DiffCut's DataIterator.process_image for the image: [1, 3, size, size] in [0, 1]."""
    rgb = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255.0
    _, h, w = rgb.shape
    c = min(h, w) - 1
    top, left = int(round((h - c) / 2.0)), int(round((w - c) / 2.0))
    crop = rgb[None, :, top:top + c, left:left + c]
    # T.Resize(bilinear, antialias=None) on a tensor: no antialiasing, half-pixel centres.
    return F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=False)


def run_diffcut(weights: Path, checkout: Path, image_path: Path, size: int, repeats: int) -> dict:
    """DiffCut's pipeline on PyTorch CPU fp32: load once, then best of `repeats` per stage."""
    DiffCut = import_diffcut(checkout)
    start = time.perf_counter()
    vae = AutoencoderKL.from_pretrained(weights, subfolder="vae").eval()
    unet = UNet2DConditionModel.from_pretrained(weights, subfolder="unet").eval()
    text_encoder = CLIPTextModel.from_pretrained(weights, subfolder="text_encoder").eval()
    scheduler = DDIMScheduler(**SD_SCHEDULE, timestep_spacing="trailing")
    scheduler.set_timesteps(50)
    load = time.perf_counter() - start
    print(f"DiffCut (PyTorch) load: {load:.2f} s")
    input_ids = common.empty_prompt_ids()
    runs, segments = [], None
    with torch.no_grad():
        for i in range(repeats):
            t0 = time.perf_counter()
            img = load_image(image_path, size)
            # LdmExtractor.forward
            images = F.interpolate(img, size=(size, size), mode="bilinear")
            rng = torch.Generator(device="cpu").manual_seed(42)
            t1 = time.perf_counter()
            prompt_embeds = text_encoder(input_ids).last_hidden_state
            t2 = time.perf_counter()
            latent = vae.encode(2 * images - 1).latent_dist.mean * vae.config.scaling_factor
            t3 = time.perf_counter()
            noise = torch.randn(1, 4, size // 8, size // 8, generator=rng).expand_as(latent)
            captured = {}
            block = unet.down_blocks[-2].attentions[-1].transformer_blocks[-1].attn1
            handle = block.register_forward_hook(lambda mod, inp, out: captured.update(features=out.detach()))
            t = torch.tensor([STEP]).expand(1)
            noisy = scheduler.scale_model_input(scheduler.add_noise(latent, noise, t), t)
            unet(noisy, t, encoder_hidden_states=prompt_embeds).sample
            handle.remove()
            t4 = time.perf_counter()
            masks = DiffCut().generate_masks(
                captured["features"].to(torch.float32), TAU, mask_size=(MASK, MASK), alpha=ALPHA, img_size=size
            )
            t5 = time.perf_counter()
            segments = int(len(np.unique(masks)))
            runs.append({"prepare": t1 - t0, "clip": t2 - t1, "vae": t3 - t2, "unet": t4 - t3, "cut": t5 - t4})
            print(f"DiffCut (PyTorch), run {i + 1}/{repeats}: " + ", ".join(f"{k} {v:.2f} s" for k, v in runs[-1].items()))
    best = {stage: min(run[stage] for run in runs) for stage in runs[0]}
    best["load"] = load
    best["work"] = min(sum(run.values()) for run in runs)
    best["total"] = load + best["work"]
    return {
        "runs": runs,
        "best": best,
        "segments": segments,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def run_ours(diffseg: Path, image: Path, weights: Path, size: int, repeats: int) -> dict:
    """`diffseg segment --method diffcut` as a subprocess, whole job; best wall and best per stage."""
    walls, runs, peaks = [], [], []
    with tempfile.TemporaryDirectory(prefix="diffcut-bench-") as tmp:
        timings = Path(tmp) / "timings.json"
        out = Path(tmp) / "out"
        command = [
            diffseg, "segment", image, "--method", "diffcut", "--input-size", str(size), "--fit", "center-crop",
            "--weights", weights, "--out", out, "--overwrite", "--offline", "--timings", timings,
            "--outputs", "labels,json",
        ]
        for i in range(repeats):
            start = time.perf_counter()
            peaks.append(sbs.run_cli_measured(command)[1])
            walls.append(time.perf_counter() - start)
            runs.append(json.loads(timings.read_text()))
            print(f"ours, run {i + 1}/{repeats}: wall {walls[-1]:.2f} s, {runs[-1]}")
        result = json.loads(next(out.glob("*.json")).read_text())
    best = {stage: min(run[stage] for run in runs) for stage in runs[0] if stage != "images"}
    segments = len(result.get("segments", []))
    return {"wall_s": walls, "best_wall_s": min(walls), "timings": runs, "best": best, "segments": segments,
            "peak_rss_gb": max(peaks)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True, help="diffusers SD 1.x folder")
    parser.add_argument("--diffcut", type=Path, required=True, help="checkout of PaulCouairon/DiffCut")
    parser.add_argument("--image", type=Path, default=sbs.default_image(), help="image (default: first of examples/images)")
    parser.add_argument("--diffseg", type=Path, default=sbs.REPO / "target/release/diffseg", help="our CLI binary")
    parser.add_argument("--input-size", type=int, default=1024, help="model input side (DiffCut's SD 1.4: 1024)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per side; the best is kept")
    parser.add_argument("--json", type=Path, help="write every number to this file")
    args = parser.parse_args()

    sbs.check_weights(args.weights)
    if not (args.diffcut / "diffcut/recursive_normalized_cut.py").is_file():
        sys.exit(f"error: {args.diffcut} is not a checkout of PaulCouairon/DiffCut")
    if not os.access(args.diffseg, os.X_OK):
        sys.exit(f"error: no diffseg binary at {args.diffseg}; build it with `cargo build --release --locked --bin diffseg`")
    report = {
        "machine": f"{sbs.cpu_name()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "diffseg_version": sbs.run_cli([args.diffseg, "--version"]).strip(),
        "commit": sbs.git_commit(),
        "image": str(args.image),
        "input_size": args.input_size,
        "repeats": args.repeats,
    }
    report["ours"] = run_ours(args.diffseg, args.image, args.weights, args.input_size, args.repeats)
    report["diffcut"] = run_diffcut(args.weights, args.diffcut, args.image, args.input_size, args.repeats)
    report["load_average_at_end"] = os.getloadavg()[0]
    ours, theirs = report["ours"], report["diffcut"]["best"]
    report["ratio"] = ours["best_wall_s"] / theirs["total"]
    print()
    print(f"machine : {report['machine']}, {report['load_average_at_end']:.2f} at the end")
    print(f"torch   : {report['torch']} ({report['torch_threads']} threads); {report['diffseg_version']}, commit {report['commit']}")
    print(f"image   : {args.image}, input {args.input_size}, best of {args.repeats}")
    print(f"{'stage (s)':<10}{'DiffCut':>10}{'ours':>10}")
    for stage in ("load", "decode", "prepare", "clip", "vae", "unet", "cut", "merge", "outputs", "total"):
        cells = [theirs.get(stage), ours["best"].get(stage)]
        print(f"{stage:<10}" + "".join(f"{v:10.2f}" if v is not None else f"{'-':>10}" for v in cells))
    print(f"{'wall':<10}{'-':>10}{ours['best_wall_s']:10.2f}")
    print("(our cut is timed as 'merge'; DiffCut's total = load + prepare + clip + vae + unet + cut)")
    print(f"segments: DiffCut {report['diffcut']['segments']}, ours {ours['segments']} (random weights: not comparable)")
    print(f"peak RSS: DiffCut {report['diffcut']['peak_rss_gb']:.2f} GiB, ours {ours['peak_rss_gb']:.2f} GiB")
    verdict = "target met" if report["ratio"] <= 1.0 else "target NOT met"
    print(f"\nratio = ours wall / DiffCut total = {ours['best_wall_s']:.2f} / {theirs['total']:.2f} = {report['ratio']:.3f}  ({verdict}: <= 1.0)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
