"""The report of tools/gpu/run.sh: OUT/report.json (every number) and OUT/report.md (the tables).

    python3 report.py OUT MODE      # MODE: gpu or cpu (run.sh --cpu)

Python standard library only. Reads what the steps left in OUT: steps.tsv, ours/<run>/ (stderr
stamped line by line, --timings and --summary JSON, sampled GPU memory), diffusers.json,
parity/*.json, photo-labels.json. A number whose step did not run or failed is "not measured",
never estimated.

Our per-batch times come from the CLI's progress lines (one per image, written after the
image's results; `--log-every 1`), stamped with the wall clock by run.sh. For batch k:
  wall    = last line of batch k - last line of batch k-1 (the "loaded" line for the first)
  compute = first line of batch k - last line of batch k-1, less decoding the batch's images
            and writing one image's results (--timings' decode and outputs per image; without
            --timings, a run cut short: the gaps between the batch's own lines, and nothing
            for decoding, flagged as "estimated_io")
          = the `segment_batch` call: VAE, UNet, merge and labels of the batch on the device.
The first batch includes Burn's kernel compilation and autotuning (cold); the rest are warm.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

RUNS = [("f32-b1", "f32", 1), ("f16-b1", "f16", 1), ("f32-b8", "f32", 8), ("f16-b8", "f16", 8)]
PROGRESS = re.compile(r"progress: (\d+)/(\d+) images")
GOAL_MS_PER_IMAGE = 25.0
GOAL_SPEEDUP = 4.0
NOT_MEASURED = "not measured"


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_steps(out: Path) -> list[dict]:
    steps = []
    path = out / "steps.tsv"
    if path.is_file():
        for line in path.read_text().splitlines():
            name, status, seconds, budget, note = (line.split("\t") + [""] * 5)[:5]
            steps.append({"step": name, "status": status, "seconds": float(seconds or 0), "budget": int(budget or 0), "note": note})
    return steps


def stamped_lines(path: Path) -> list[tuple[float, str]]:
    """(time, text) of each line run.sh stamped."""
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        stamp, _, text = line.partition(" ")
        try:
            lines.append((float(stamp), text))
        except ValueError:
            continue
    return lines


def batch_times(lines: list[tuple[float, str]], batch: int, io: dict | None) -> tuple[float | None, list[dict]]:
    """Seconds from start to "loaded", and each complete batch's wall and compute seconds;
    `io`: seconds per image of decoding and of writing results, if --timings has them."""
    started = next((t for t, text in lines if text == "# started"), None)
    loaded = next((t for t, text in lines if text.startswith("loaded ")), None)
    if started is None or loaded is None:
        return None, []
    done = [(t, int(m[1])) for t, text in lines if (m := PROGRESS.search(text))]
    batches = []
    previous_end = loaded
    for first in range(0, len(done) - batch + 1, batch):
        chunk = done[first : first + batch]
        if [n for _, n in chunk] != list(range(first + 1, first + batch + 1)):
            break
        wall = chunk[-1][0] - previous_end
        first_gap = chunk[0][0] - previous_end
        if io:
            compute = first_gap - io["decode_s"] * batch - io["write_s"]
        else:
            # One image's results written: the mean gap between the batch's own lines.
            compute = first_gap - ((chunk[-1][0] - chunk[0][0]) / (batch - 1) if batch > 1 else 0.0)
        batches.append({"wall_s": wall, "compute_s": compute})
        previous_end = chunk[-1][0]
    return loaded - started, batches


def gpu_memory(run_dir: Path) -> dict | None:
    """Peak used GPU memory during the run (MiB) and its rise over the memory used before."""
    samples_path = run_dir / "gpu-memory.txt"
    if not samples_path.is_file():
        return None
    samples = [int(s) for s in samples_path.read_text().split() if s.isdigit()]
    before = [int(s) for s in (run_dir / "gpu-memory-before.txt").read_text().split() if s.isdigit()]
    if not samples or not before:
        return None
    return {"peak_mib": max(samples), "before_mib": before[0], "rise_mib": max(samples) - before[0], "samples": len(samples)}


def our_run(out: Path, name: str, batch: int) -> dict | None:
    run_dir = out / "ours" / name
    if not (run_dir / "stderr.log").is_file():
        return None
    timings = read_json(run_dir / "timings.json")
    summary = read_json(run_dir / "summary.json")
    io = None
    if timings and timings.get("images"):
        io = {"decode_s": timings["decode"] / timings["images"], "write_s": timings["outputs"] / timings["images"]}
    load_s, batches = batch_times(stamped_lines(run_dir / "stderr.log"), batch, io)
    result = {
        "batch": batch,
        "io_per_image": io,
        "estimated_io": io is None,
        "start_to_loaded_s": load_s,
        "batches": batches,
        "timings": timings,
        "failed_images": len(summary["failed"]) if summary else None,
        "gpu_memory": gpu_memory(run_dir),
    }
    if batches:
        result["cold"] = batches[0]
    warm = batches[1:]
    if warm:
        compute = statistics.median(b["compute_s"] for b in warm)
        wall = statistics.median(b["wall_s"] for b in warm)
        result["warm"] = {
            "batches": len(warm),
            "compute_median_s": compute,
            "compute_min_s": min(b["compute_s"] for b in warm),
            "wall_median_s": wall,
            "per_image_ms": compute / batch * 1000,
            "per_image_wall_ms": wall / batch * 1000,
        }
    return result


def parity(out: Path) -> dict:
    result = {}
    for precision in ("f32", "f16"):
        attention = read_json(out / "parity" / f"attention-{precision}.json")
        labels = read_json(out / "parity" / f"labels-{precision}.json")
        if attention or labels:
            result[precision] = {"attention": attention, "labels": labels}
    return result


def goals(mode: str, ours: dict, diffusers: dict | None) -> list[dict]:
    """The issue's two GPU goals, each met, not met or not measured."""
    if mode != "gpu":
        verdict = "not applicable (--cpu: the tiny model on the CPU)"
        return [{"goal": g, "measured": None, "verdict": verdict} for g in ("f16 batch 8 ms per image", "speed-up over diffusers fp16")]
    f16_b8 = (ours.get("f16-b8") or {}).get("warm")
    ms = f16_b8["per_image_ms"] if f16_b8 else None
    theirs = next((b for b in (diffusers or {}).get("batches", []) if b["batch"] == 8), None)
    speedup = theirs["per_image_s"] * 1000 / ms if ms and theirs else None
    return [
        {
            "goal": f"f16 batch 8, warm: at most {GOAL_MS_PER_IMAGE:g} ms per image",
            "measured": ms,
            "verdict": NOT_MEASURED if ms is None else ("met" if ms <= GOAL_MS_PER_IMAGE else "NOT met"),
        },
        {
            "goal": f"f16 batch 8: at least {GOAL_SPEEDUP:g}x diffusers fp16 batch 8 per image",
            "measured": speedup,
            "verdict": NOT_MEASURED if speedup is None else ("met" if speedup >= GOAL_SPEEDUP else "NOT met"),
        },
    ]


def cell(value, fmt: str = "{:.1f}", scale: float = 1.0) -> str:
    return NOT_MEASURED if value is None else fmt.format(value * scale)


def markdown(report: dict) -> str:
    mode = report["mode"]
    lines = [f"# diffseg GPU run ({'CUDA' if mode == 'gpu' else '--cpu: CPU, tiny fixture'})", ""]
    for key in ("gpu", "diffseg", "python"):
        if report.get(key):
            lines.append(f"- {key}: {report[key]}")
    lines += ["", "## Steps", "", "| step | status | seconds | budget (s) | note |", "| --- | --- | --- | --- | --- |"]
    for s in report["steps"]:
        lines.append(f"| {s['step']} | {s['status']} | {s['seconds']:.1f} | {s['budget']} | {s['note'].replace('|', '/')} |")
    backend = "cuda:0" if mode == "gpu" else "cpu"
    lines += [
        "",
        f"## diffseg segment on {backend}",
        "",
        "Per image: the warm batches' median `segment_batch` time (VAE, UNet, merge, labels) over the batch;",
        "with I/O: also decoding the images and writing their results. Cold: the first batch (kernel",
        "compilation and autotuning included). Memory: peak used by the GPU while the run went, less before.",
        "",
        "| run | start to loaded (s) | cold batch (s) | warm batch (s) | warm per image (ms) | with I/O (ms) | warm batches | GPU memory (MiB) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, _, _ in RUNS:
        run = report["ours"].get(name)
        if run is None:
            lines.append(f"| {name} | {' | '.join([NOT_MEASURED] * 7)} |")
            continue
        warm = run.get("warm") or {}
        memory = run.get("gpu_memory")
        lines.append(
            f"| {name} | {cell(run['start_to_loaded_s'])} | {cell((run.get('cold') or {}).get('compute_s'), '{:.2f}')} "
            f"| {cell(warm.get('compute_median_s'), '{:.3f}')} | {cell(warm.get('per_image_ms'))} "
            f"| {cell(warm.get('per_image_wall_ms'))} | {warm.get('batches', 0)} "
            f"| {cell(memory['rise_mib'] if memory else None, '{:.0f}')} |"
        )
    diffusers = report.get("diffusers")
    lines += ["", "## diffusers", ""]
    if diffusers:
        lines += [
            f"{diffusers['dtype']} on {diffusers['device']}, torch {diffusers['torch']}, best of {diffusers['repeats']} after a warm-up; "
            f"load {diffusers['load_s']:.1f} s.",
            "",
            "| batch | VAE (ms) | CLIP (ms) | UNet (ms) | forward (ms) | per image (ms) | peak memory (MiB) |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for b in diffusers["batches"]:
            best = b["best"]
            lines.append(
                f"| {b['batch']} | {best['vae'] * 1000:.1f} | {best['clip'] * 1000:.1f} | {best['unet'] * 1000:.1f} "
                f"| {best['forward'] * 1000:.1f} | {b['per_image_s'] * 1000:.1f} | {cell(b.get('peak_memory_mib'), '{:.0f}')} |"
            )
    else:
        lines.append(NOT_MEASURED + " (see the diffusers step).")
    lines += ["", "## Goals", "", "| goal | measured | verdict |", "| --- | --- | --- |"]
    for g in report["goals"]:
        lines.append(f"| {g['goal']} | {cell(g['measured'], '{:.2f}')} | {g['verdict']} |")
    lines += [
        "",
        f"## Parity on the tiny fixture: {backend} against the CPU's f32",
        "",
        "| precision | attention max abs error | largest attention value | labels matched / raw | segments (CPU, ours) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for precision in ("f32", "f16"):
        entry = report["parity"].get(precision) or {}
        attention, labels = entry.get("attention"), entry.get("labels")
        largest = max(t["max_abs_reference"] for t in attention["tensors"].values()) if attention else None
        pair = labels["pairs"][0] if labels else None
        lines.append(
            f"| {precision} | {cell(attention['max_abs_error'] if attention else None, '{:.3g}')} | {cell(largest, '{:.3g}')} "
            f"| {cell(pair['matched'] if pair else None, '{:.4f}')} / {cell(pair['raw'] if pair else None, '{:.4f}')} "
            f"| {', '.join(map(str, pair['segments'])) if pair else NOT_MEASURED} |"
        )
    photos = report.get("photo_labels")
    lines += ["", "## f16 against f32 labels on the photos (batch-1 runs)", ""]
    if photos:
        matched = [p["matched"] for p in photos["pairs"]]
        raw = [p["raw"] for p in photos["pairs"]]
        lines.append(
            f"{len(matched)} images: matched agreement min {min(matched):.4f}, mean {statistics.mean(matched):.4f}; "
            f"raw min {min(raw):.4f}, mean {statistics.mean(raw):.4f}."
        )
    else:
        lines.append(NOT_MEASURED + ".")
    return "\n".join(lines) + "\n"


def missing_numbers(report: dict) -> list[str]:
    """Steps that passed but left no numbers to report: the script and the CLI's output drifted
    apart (say, a reworded progress line), which must fail the run, not read "not measured"."""
    passed = {s["step"] for s in report["steps"] if s["status"] == "ok"}
    problems = [
        f"step {name} passed but its progress lines gave no warm batch"
        for name, _, _ in RUNS
        if name in passed and not (report["ours"].get(name) or {}).get("warm")
    ]
    if "diffusers" in passed and not report["diffusers"]:
        problems.append("step diffusers passed but wrote no diffusers.json")
    for precision in ("f32", "f16"):
        entry = report["parity"].get(precision) or {}
        if f"parity-{precision}" in passed and not (entry.get("attention") and entry.get("labels")):
            problems.append(f"step parity-{precision} passed but left no comparison")
    if "photo-labels" in passed and not report["photo_labels"]:
        problems.append("step photo-labels passed but left no comparison")
    return problems


def first_line(path: Path, prefix: str) -> str | None:
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
    return None


def main(out: Path, mode: str) -> int:
    ours = {name: our_run(out, name, batch) for name, _, batch in RUNS}
    ours = {name: run for name, run in ours.items() if run is not None}
    diffusers = read_json(out / "diffusers.json")
    gpu_csv = out / "gpu.csv"
    report = {
        "mode": mode,
        "gpu": gpu_csv.read_text().splitlines()[-1] if gpu_csv.is_file() else None,
        "diffseg": first_line(out / "logs/environment.log", "diffseg "),
        "python": first_line(out / "logs/python.log", "torch "),
        "steps": read_steps(out),
        "ours": ours,
        "diffusers": diffusers,
        "parity": parity(out),
        "photo_labels": read_json(out / "photo-labels.json"),
    }
    report["goals"] = goals(mode, ours, diffusers)
    report["problems"] = missing_numbers(report)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report))
    for problem in report["problems"]:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[2] not in ("gpu", "cpu"):
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1]), sys.argv[2]))
