"""The default progress reporter: lines on Python's sys.stderr.

Rust's own progress goes to the process's standard error, which a notebook never shows;
Python's sys.stderr is what Jupyter captures under the cell, so a first `Segmenter()`
downloading gigabytes says so there instead of looking like a hang.
"""

import sys
from typing import Any, Dict


def _size(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


class StderrReporter:
    """Download events as lines: each file's start, every tenth of it, its end, retries."""

    def __init__(self) -> None:
        self._tenths: Dict[str, int] = {}

    def __call__(self, event: Dict[str, Any]) -> None:
        stage = event.get("stage")
        if stage == "download":
            self._download(event["file"], event["done"], event["total"])
        elif stage == "retry":
            self._print(f"diffseg: downloading {event['file']} failed ({event['reason']}); "
                        f"resuming in {event['delay']:.0f} s")

    def _download(self, file: str, done: int, total: int) -> None:
        if file not in self._tenths:
            self._tenths[file] = 0
            self._print(f"diffseg: downloading {file} ({_size(total)})")
        if done >= total:
            del self._tenths[file]
            self._print(f"diffseg: downloaded {file}")
            return
        tenths = done * 10 // total
        if tenths > self._tenths[file]:
            self._tenths[file] = tenths
            self._print(f"diffseg:   {file}: {tenths * 10}% of {_size(total)}")

    @staticmethod
    def _print(line: str) -> None:
        print(line, file=sys.stderr, flush=True)
