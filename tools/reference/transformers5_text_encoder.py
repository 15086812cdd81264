"""Write the tiny text encoder as the current transformers' `save_pretrained` writes it.

    python tools/reference/transformers5_text_encoder.py
    # writes crates/diffseg-sd/tests/fixtures/tiny-transformers5/text_encoder/

A CLIPTextModel built by transformers 5 and saved with `save_pretrained` has no
`text_model.` prefix on its keys (one loaded from an older file keeps the file's
names). This builds a fresh model from the tiny fixture's config, copies the tiny
fixture's weights into it, saves it, and checks two things before anyone relies on
the files: the keys really lack the prefix, and transformers' output of the saved
model equals that of the original fixture (the Rust test then only has to show
that both folders give the same embedding, the original being already proven
against transformers).
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from safetensors import safe_open
from transformers import CLIPTextConfig, CLIPTextModel

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "crates/diffseg-sd/tests/fixtures/tiny/text_encoder"
OUT = REPO / "crates/diffseg-sd/tests/fixtures/tiny-transformers5/text_encoder"


def main() -> None:
    original = CLIPTextModel.from_pretrained(TINY).eval()
    fresh = CLIPTextModel(CLIPTextConfig.from_pretrained(TINY)).eval()
    fresh.load_state_dict(original.state_dict())
    fresh.save_pretrained(OUT)

    with safe_open(OUT / "model.safetensors", "pt") as saved:
        keys = list(saved.keys())
    assert keys and not any(key.startswith("text_model.") for key in keys), keys[:3]

    reloaded = CLIPTextModel.from_pretrained(OUT).eval()
    ids = torch.tensor([[49406, 49407] + [49407] * 75])
    with torch.no_grad():
        expected = original(ids).last_hidden_state
        actual = reloaded(ids).last_hidden_state
    assert torch.equal(expected, actual), (expected - actual).abs().max()
    print(f"transformers {transformers.__version__}: wrote {OUT} ({len(keys)} keys, no text_model. prefix)")


if __name__ == "__main__":
    main()
