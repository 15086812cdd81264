"""Writes crates/diffseg/tests/fixtures/cmyk.jpg: a small CMYK JPEG (Adobe
inverted CMYK, as Photoshop writes), for diffseg's bad-input tests. The Rust
image encoders cannot write CMYK, so this one file is committed.

    python tools/reference/make_cmyk_jpeg.py
"""
import pathlib

from PIL import Image

root = pathlib.Path(__file__).resolve().parents[2]
image = Image.new("CMYK", (24, 16))
for y in range(16):
    for x in range(24):
        image.putpixel((x, y), (x * 10, y * 15, 0 if x < 12 else 200, 0))
path = root / "crates/diffseg/tests/fixtures/cmyk.jpg"
image.save(path, quality=90)
print("wrote", path, path.stat().st_size, "bytes")
