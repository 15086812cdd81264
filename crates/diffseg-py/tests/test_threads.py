"""The GIL is released during compute, and one Segmenter serves several threads."""

import random
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest


def counter_advance_during(call) -> int:
    """How far a counter, incremented by another Python thread, advances while `call` runs.

    The switch interval is raised to a minute, so the other thread can only run while this
    one waits or has released the GIL: never in the few bytecodes around `call`, and never
    during `call` if it keeps the GIL (the calls here last well under a minute)."""
    counter = [0]
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            counter[0] += 1
            stop.wait(0.001)  # sleeps without the GIL: this thread never holds it long

    interval = sys.getswitchinterval()
    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        stop.wait(0.05)  # let it start spinning
        sys.setswitchinterval(60.0)
        before = counter[0]
        call()
        after = counter[0]
    finally:
        sys.setswitchinterval(interval)
        stop.set()
        spinner.join()
    return after - before


def test_the_gil_is_released_during_segment(segmenter, rgb_array):
    assert counter_advance_during(lambda: segmenter.segment(rgb_array)) > 0


def test_the_gil_is_released_during_attention_and_merge(segmenter, rgb_array):
    import diffseg

    # A large image, so that merging (which labels every pixel) lasts many milliseconds.
    large = np.tile(rgb_array, (12, 12, 1))
    attention = {}
    assert counter_advance_during(lambda: attention.update(segmenter.attention(large))) > 0
    assert counter_advance_during(lambda: diffseg.merge(attention)) > 0


def test_the_probe_sees_a_call_that_keeps_the_gil():
    # The control: sorting a million floats is C code that never releases the GIL.
    numbers = [random.random() for _ in range(1_000_000)]
    assert counter_advance_during(lambda: sorted(numbers)) == 0


def test_two_threads_share_one_segmenter(segmenter, image_folder):
    paths = sorted(image_folder.glob("*.png"))
    alone = [segmenter.segment(path).labels for path in paths]
    with ThreadPoolExecutor(max_workers=2) as pool:
        together = list(pool.map(lambda path: segmenter.segment(path).labels, paths * 2))
    for index, labels in enumerate(together):
        np.testing.assert_array_equal(labels, alone[index % len(paths)])
