"""Reference values for diffseg's image resize (method §1): PyTorch bilinear,
half-pixel centres (align_corners=False), no antialiasing, float output.
TF2 `tf.image.resize(..., "bilinear")` computes the same thing.

Writes crates/diffseg/tests/fixtures/resize_reference.json:
    python tools/reference/resize_reference.py
"""
import json
import pathlib

import torch
import torch.nn.functional as F

root = pathlib.Path(__file__).resolve().parents[2]
generator = torch.Generator().manual_seed(0)
plane = torch.rand(5, 7, generator=generator, dtype=torch.float64) * 255.0
cases = []
for out_h, out_w in [(3, 4), (9, 11), (2, 2), (16, 16), (5, 7)]:
    out = F.interpolate(plane[None, None], size=(out_h, out_w), mode="bilinear",
                        align_corners=False, antialias=False)[0, 0]
    cases.append({"out_h": out_h, "out_w": out_w, "values": out.flatten().tolist()})
fixture = {"in_h": 5, "in_w": 7, "plane": plane.flatten().tolist(), "cases": cases}
path = root / "crates/diffseg/tests/fixtures/resize_reference.json"
path.write_text(json.dumps(fixture))
print("wrote", path)
