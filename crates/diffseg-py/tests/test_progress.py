"""Progress a notebook can show (callbacks, and the default lines on sys.stderr), and
Ctrl-C: KeyboardInterrupt between images of a batch and between chunks of a download."""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import diffseg

from conftest import REPOSITORY, TAU, TINY_WEIGHTS
from hub_server import TinyHub

PACKAGE = REPOSITORY / "crates" / "diffseg-py"
FULL_FILES = [
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
]


def test_segment_batch_reports_each_pass_and_batches_change_nothing(segmenter, image_folder):
    paths = sorted(image_folder.glob("*.png")) * 2
    events = []
    results = segmenter.segment_batch(paths, batch_size=4, progress=events.append)
    assert events == [{"stage": "segment", "done": done, "total": 6} for done in (0, 4, 6)]
    assert len(results) == 6
    for path, result in zip(paths, results):
        np.testing.assert_array_equal(result.labels, segmenter.segment(path).labels)
    assert segmenter.segment_batch([], progress=events.append) == []
    assert events[-1] == {"stage": "segment", "done": 0, "total": 0}
    assert len(segmenter.segment_batch(paths[:2], progress=False)) == 2


def test_segment_batch_refuses_bad_arguments(segmenter, rgb_path):
    with pytest.raises(ValueError, match="batch_size"):
        segmenter.segment_batch([rgb_path], batch_size=0)
    with pytest.raises(TypeError, match="progress"):
        segmenter.segment_batch([rgb_path], progress="yes")


def test_an_exception_in_the_callback_stops_the_batch(segmenter, rgb_path):
    def fail(event):
        if event["done"] > 0:
            raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        segmenter.segment_batch([rgb_path] * 3, batch_size=1, progress=fail)


@pytest.fixture
def hub_environment(monkeypatch, tmp_path):
    """The Hub settings of a process pointed at a local Hub, with an empty cache."""
    def point_at(hub: TinyHub) -> pathlib.Path:
        cache = tmp_path / "hub-cache"
        monkeypatch.delenv("DIFFSEG_WEIGHTS", raising=False)
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.setenv("HF_HUB_CACHE", str(cache))
        monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-token"))
        return cache
    return point_at


def test_a_download_reports_every_file_to_the_callback(hub_environment):
    hub = TinyHub(TINY_WEIGHTS, "tiny/sd")
    try:
        hub_environment(hub)
        events = []
        segmenter = diffseg.Segmenter(model="tiny/sd", tau=TAU, progress=events.append)
    finally:
        hub.close()
    assert segmenter.input_size == 128
    for file in FULL_FILES:
        size = (TINY_WEIGHTS / file).stat().st_size
        mine = [event for event in events if event.get("file") == file]
        assert mine[0] == {"stage": "download", "file": file, "done": 0, "total": size}
        assert mine[-1] == {"stage": "download", "file": file, "done": size, "total": size}
        assert [event["done"] for event in mine] == sorted(event["done"] for event in mine)


def test_the_default_reporter_writes_lines_python_shows(hub_environment, capsys):
    hub = TinyHub(TINY_WEIGHTS, "tiny/sd")
    try:
        hub_environment(hub)
        diffseg.Segmenter(model="tiny/sd", tau=TAU)
    finally:
        hub.close()
    # On Python's sys.stderr (what a notebook shows), not the process's file descriptor 2.
    lines = capsys.readouterr().err.splitlines()
    for file in FULL_FILES:
        assert any(line.startswith(f"diffseg: downloading {file} (") for line in lines), lines
        assert f"diffseg: downloaded {file}" in lines


def test_progress_false_is_silent_and_other_values_are_refused(hub_environment, capsys):
    hub = TinyHub(TINY_WEIGHTS, "tiny/sd")
    try:
        hub_environment(hub)
        with pytest.raises(TypeError, match="progress"):
            diffseg.Segmenter(model="tiny/sd", progress=42)
        diffseg.Segmenter(model="tiny/sd", tau=TAU, progress=False)
    finally:
        hub.close()
    assert "diffseg:" not in capsys.readouterr().err


def interrupted(script: str, started, env=None, timeout: float = 60.0):
    """Runs `script` in a Python subprocess, sends SIGINT once `started()` is true, and
    returns (seconds from the signal to the exit, return code, stderr). The scripts run
    no Python code of their own while Rust works (no progress callback: calling one would
    let Python raise the KeyboardInterrupt itself), so only diffseg's own check of the
    signal handlers can stop them early."""
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, **(env or {})})
    try:
        deadline = time.monotonic() + timeout
        while not started():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "it never started"
            time.sleep(0.02)
        time.sleep(0.3)  # well inside the long loop
        assert process.poll() is None, "it finished before the signal"
        sent = time.monotonic()
        process.send_signal(signal.SIGINT)
        process.wait(timeout=timeout)
        elapsed = time.monotonic() - sent
        return elapsed, process.returncode, process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def python_path() -> str:
    return os.pathsep.join([str(pathlib.Path(diffseg.__file__).parent.parent),
                            str(pathlib.Path(__file__).parent)])


def test_ctrl_c_stops_segment_batch_between_images(image_folder, tmp_path):
    marker = tmp_path / "started"
    elapsed, code, stderr = interrupted(f"""
        import pathlib
        import diffseg
        segmenter = diffseg.Segmenter(weights={str(TINY_WEIGHTS)!r}, allow_download=False, tau={TAU})
        images = [{str(image_folder / "astronaut.png")!r}] * 20_000  # minutes of work
        pathlib.Path({str(marker)!r}).touch()
        segmenter.segment_batch(images, batch_size=1)
        print("finished", flush=True)
    """, marker.exists, env={"PYTHONPATH": python_path()})
    assert "KeyboardInterrupt" in stderr, stderr
    assert code != 0
    assert elapsed < 3.0, f"{elapsed:.1f} s from Ctrl-C to the exit"


def test_ctrl_c_stops_a_download_between_chunks(tmp_path):
    cache = tmp_path / "hub-cache"
    partial = lambda: list(cache.glob("models--tiny--sd/blobs/*.part"))  # noqa: E731
    # A slow Hub (64 KiB every 50 ms: the tiny model takes about 5 s), in this process.
    hub = TinyHub(TINY_WEIGHTS, "tiny/sd", step=64 * 1024, pause=0.05)
    try:
        elapsed, code, stderr = interrupted("""
            import diffseg
            diffseg.Segmenter(model="tiny/sd", progress=False)
            print("finished", flush=True)
        """, lambda: bool(partial()),
            env={"HF_ENDPOINT": hub.endpoint, "HF_HUB_CACHE": str(cache),
                 "HF_TOKEN_PATH": str(tmp_path / "no-token"), "DIFFSEG_WEIGHTS": "",
                 # Empty counts as unset, whatever the environment running the tests says.
                 "HF_HUB_OFFLINE": "", "TRANSFORMERS_OFFLINE": "", "HF_TOKEN": "",
                 "PYTHONPATH": python_path()})
    finally:
        hub.close()
    assert "KeyboardInterrupt" in stderr, stderr
    assert code != 0
    assert elapsed < 3.0, f"{elapsed:.1f} s from Ctrl-C to the exit"
    # What arrived waits for the next run to resume it.
    assert partial(), list(cache.rglob("*"))
