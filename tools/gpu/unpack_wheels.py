"""Makes the bundle's wheels importable where this Python lacks them (tools/gpu/run.sh).

    python3 unpack_wheels.py WHEELS TARGET

Each wheel in WHEELS whose top-level modules do not all import here is unpacked into TARGET
(which run.sh puts on PYTHONPATH). A wheel is a zip of its importable files, so unpacked it
imports without pip, network or write access to site-packages; nothing outside TARGET is
touched. A binary wheel (Pillow) is taken only when its tags fit this interpreter (CPython
version, Linux x86-64); of several versions of one package, the first that fits.
"""

from __future__ import annotations

import importlib.util
import sys
import zipfile
from pathlib import Path


def fits_this_python(wheel: Path) -> bool:
    """Whether the wheel's python and platform tags (name-version-python-abi-platform) fit."""
    python_tags, _, platform = wheel.stem.split("-")[-3:]
    this = f"cp{sys.version_info.major}{sys.version_info.minor}"
    python_ok = any(tag in ("py3", this) for tag in python_tags.split("."))
    platform_ok = platform == "any" or ("linux" in platform and "x86_64" in platform)
    return python_ok and platform_ok


def top_level_modules(wheel: zipfile.ZipFile) -> set[str]:
    """The importable names a wheel provides: its top-level packages and modules."""
    names = set()
    for entry in wheel.namelist():
        first = entry.split("/", 1)[0]
        if first.endswith((".dist-info", ".data", ".libs")):
            continue
        if "/" in entry or first.endswith(".py"):
            names.add(first.removesuffix(".py"))
    return names


def main(wheels: Path, target: Path) -> int:
    target.mkdir(parents=True, exist_ok=True)
    done: set[str] = set()
    for wheel_path in sorted(wheels.glob("*.whl")):
        package = wheel_path.name.split("-")[0].lower()
        if package in done or not fits_this_python(wheel_path):
            continue
        with zipfile.ZipFile(wheel_path) as wheel:
            modules = top_level_modules(wheel)
            missing = sorted(m for m in modules if importlib.util.find_spec(m) is None)
            done.add(package)
            if missing:
                wheel.extractall(target)
                print(f"unpacked {wheel_path.name} (this Python lacks {', '.join(missing)})")
            else:
                print(f"already importable: {', '.join(sorted(modules))} (not using {wheel_path.name})")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
