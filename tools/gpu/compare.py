"""Parity numbers for tools/gpu/run.sh, with the Python standard library only (no numpy: CI's
system Python has none, and the device image's is not needed).

    python3 compare.py attention REF.safetensors OTHER.safetensors   # max |error| per map
    python3 compare.py labels REF.png OTHER.png [REF2.png OTHER2.png ...]   # label agreement

Both print one JSON object on standard output.

attention: the `self_attn.*` maps `diffseg attention` writes (f32, f16 or bf16), compared
tensor by tensor: max |OTHER - REF| and the largest |REF| (for scale). A tensor missing on
either side, or of another shape, is an error.

labels: label PNGs as `diffseg segment`/`merge` write them (8-bit palette or 8/16-bit
greyscale, pixel = segment index). Per pair: the segment counts, the share of pixels with the
same label (`raw`), and the share after matching each REF segment to at most one OTHER segment,
largest overlaps first (`matched`; greedy, so a lower bound of the best one-to-one matching: the
two label maps are numbered independently, and one segment split in two renumbers the rest).
"""

from __future__ import annotations

import json
import struct
import sys
import zlib
from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# safetensors dtype -> struct format character and size in bytes.
FLOAT_FORMATS = {"F32": ("f", 4), "F16": ("e", 2)}


class CompareError(Exception):
    """A file that cannot be compared, with why."""


def read_safetensors(path: Path) -> dict[str, tuple[list[int], list[float]]]:
    """Every float tensor of a safetensors file: name -> (shape, values)."""
    data = path.read_bytes()
    if len(data) < 8:
        raise CompareError(f"{path}: not a safetensors file (shorter than its header length)")
    (header_len,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8 : 8 + header_len])
    except ValueError as error:
        raise CompareError(f"{path}: unreadable safetensors header: {error}") from error
    body = data[8 + header_len :]
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = entry["dtype"]
        start, end = entry["data_offsets"]
        raw = body[start:end]
        if dtype == "BF16":
            # bf16 is the upper half of an f32.
            count = len(raw) // 2
            halves = struct.unpack(f"<{count}H", raw)
            values = list(struct.unpack(f"<{count}f", struct.pack(f"<{count}I", *(h << 16 for h in halves))))
        elif dtype in FLOAT_FORMATS:
            code, size = FLOAT_FORMATS[dtype]
            values = list(struct.unpack(f"<{len(raw) // size}{code}", raw))
        else:
            raise CompareError(f"{path}: tensor {name} has dtype {dtype}, not a float type")
        tensors[name] = (entry["shape"], values)
    return tensors


def compare_attention(reference: Path, other: Path) -> dict:
    """Max |other - reference| per tensor and over all of them."""
    ref, oth = read_safetensors(reference), read_safetensors(other)
    if set(ref) != set(oth):
        raise CompareError(f"{other}: tensors {sorted(oth)} differ from {reference}'s {sorted(ref)}")
    tensors = {}
    for name in sorted(ref):
        (ref_shape, ref_values), (other_shape, other_values) = ref[name], oth[name]
        if ref_shape != other_shape:
            raise CompareError(f"{other}: {name} has shape {other_shape}, {reference} has {ref_shape}")
        tensors[name] = {
            "shape": ref_shape,
            "max_abs_error": max(abs(a - b) for a, b in zip(ref_values, other_values)),
            "max_abs_reference": max(abs(a) for a in ref_values),
        }
    return {
        "reference": str(reference),
        "other": str(other),
        "max_abs_error": max(t["max_abs_error"] for t in tensors.values()),
        "tensors": tensors,
    }


def png_chunks(path: Path, data: bytes):
    """(type, payload) of each chunk."""
    if not data.startswith(PNG_SIGNATURE):
        raise CompareError(f"{path}: not a PNG file")
    position = len(PNG_SIGNATURE)
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        yield kind, data[position + 8 : position + 8 + length]
        position += 12 + length


def unfilter(path: Path, raw: bytes, width: int, height: int, bytes_per_pixel: int) -> bytearray:
    """The pixel bytes of a non-interlaced image, the PNG row filters undone."""
    stride = width * bytes_per_pixel
    pixels = bytearray(height * stride)
    previous = bytearray(stride)
    position = 0
    for y in range(height):
        kind = raw[position]
        row = bytearray(raw[position + 1 : position + 1 + stride])
        position += 1 + stride
        for i in range(stride):
            left = row[i - bytes_per_pixel] if i >= bytes_per_pixel else 0
            up = previous[i]
            if kind == 1:
                row[i] = (row[i] + left) & 0xFF
            elif kind == 2:
                row[i] = (row[i] + up) & 0xFF
            elif kind == 3:
                row[i] = (row[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                up_left = previous[i - bytes_per_pixel] if i >= bytes_per_pixel else 0
                estimate = left + up - up_left
                pa, pb, pc = abs(estimate - left), abs(estimate - up), abs(estimate - up_left)
                predictor = left if pa <= pb and pa <= pc else (up if pb <= pc else up_left)
                row[i] = (row[i] + predictor) & 0xFF
            elif kind != 0:
                raise CompareError(f"{path}: unknown PNG row filter {kind}")
        pixels[y * stride : (y + 1) * stride] = row
        previous = row
    return pixels


def read_label_png(path: Path) -> tuple[int, int, list[int]]:
    """(width, height, labels) of a label PNG: 8-bit palette (the indices are the labels),
    8- or 16-bit greyscale."""
    data = path.read_bytes()
    header, compressed = None, bytearray()
    for kind, payload in png_chunks(path, data):
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", payload)
        elif kind == b"IDAT":
            compressed += payload
    if header is None:
        raise CompareError(f"{path}: PNG without IHDR")
    width, height, depth, colour, _, _, interlace = header
    grey, palette = colour == 0 and depth in (8, 16), colour == 3 and depth == 8
    if not (grey or palette) or interlace != 0:
        raise CompareError(
            f"{path}: not an 8-bit palette or 8/16-bit greyscale non-interlaced PNG (colour {colour}, depth {depth})"
        )
    pixels = unfilter(path, zlib.decompress(bytes(compressed)), width, height, depth // 8)
    if depth == 8:
        return width, height, list(pixels)
    return width, height, list(struct.unpack(f">{width * height}H", pixels))


def label_agreement(reference: Path, other: Path) -> dict:
    """Raw and greedily matched pixel agreement of two label maps of one image."""
    ref_w, ref_h, ref = read_label_png(reference)
    other_w, other_h, oth = read_label_png(other)
    if (ref_w, ref_h) != (other_w, other_h):
        raise CompareError(f"{other}: {other_w}x{other_h} labels, {reference} has {ref_w}x{ref_h}")
    overlaps: dict[tuple[int, int], int] = {}
    for pair in zip(ref, oth):
        overlaps[pair] = overlaps.get(pair, 0) + 1
    used_ref, used_other, matched = set(), set(), 0
    for (a, b), count in sorted(overlaps.items(), key=lambda item: -item[1]):
        if a not in used_ref and b not in used_other:
            used_ref.add(a)
            used_other.add(b)
            matched += count
    total = len(ref)
    return {
        "reference": str(reference),
        "other": str(other),
        "segments": [len(set(ref)), len(set(oth))],
        "raw": sum(count for (a, b), count in overlaps.items() if a == b) / total,
        "matched": matched / total,
    }


def main(argv: list[str]) -> int:
    if argv[:1] == ["attention"] and len(argv) == 3:
        result = compare_attention(Path(argv[1]), Path(argv[2]))
    elif argv[:1] == ["labels"] and len(argv) >= 3 and len(argv) % 2 == 1:
        pairs = [label_agreement(Path(a), Path(b)) for a, b in zip(argv[1::2], argv[2::2])]
        result = {
            "pairs": pairs,
            "min_matched": min(p["matched"] for p in pairs),
            "min_raw": min(p["raw"] for p in pairs),
        }
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except (CompareError, OSError) as error:
        sys.exit(f"error: {error}")
