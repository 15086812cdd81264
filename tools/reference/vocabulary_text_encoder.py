"""Write a tiny text encoder whose vocabulary entries embed differently, with
transformers' embeddings of the preset vocabularies' prompts.

    python tools/reference/vocabulary_text_encoder.py
    # writes crates/diffseg-sd/tests/fixtures/vocabulary-text-encoder/

The tiny fixture's text encoder (hidden 24, 49 408 tokens) keeps only nine
token-embedding rows non-zero, so every vocabulary entry would embed alike. This
copy gives every token of the preset vocabularies (COCO-Stuff-27, Cityscapes-27,
as CLIP's tokenizer fixture tokenizes them) its own seeded row, N(0, 0.3²) like
the fixture's. The rest stay zero, so `model.safetensors.gz` is small; the test
unpacks it.

`embeddings.safetensors` holds, for each preset, its names joined with spaces as
one prompt (transformers' `CLIPTokenizer`, padded and truncated to 77), the ids
(`ids`, [2, 77] i64) and transformers' last hidden state (`hidden`, [2, 77, 24] f32):
the text side of naming, for the later cross-attention scoring parity.
"""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "crates/diffseg-sd/tests/fixtures/tiny/text_encoder"
TOKENIZER = REPO / "crates/diffseg-sd/tests/fixtures/clip-tokenizer"
OUT = REPO / "crates/diffseg-sd/tests/fixtures/vocabulary-text-encoder"
# crates/diffseg/src/eval/dataset.rs, the presets' class names.
COCO_STUFF_27 = [
    "electronic", "appliance", "food-things", "furniture-things", "indoor", "kitchen",
    "accessory", "animal", "outdoor", "person", "sports", "vehicle", "ceiling", "floor",
    "food-stuff", "furniture-stuff", "raw-material", "textile", "wall", "window", "building",
    "ground", "plant", "sky", "solid", "structural", "water",
]
CITYSCAPES_27 = [
    "road", "sidewalk", "parking", "rail track", "building", "wall", "fence", "guard rail",
    "bridge", "tunnel", "pole", "polegroup", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "caravan", "trailer", "train",
    "motorcycle", "bicycle",
]


def tokenizer() -> CLIPTokenizer:
    folder = Path(tempfile.mkdtemp())
    for name in ["vocab.json", "merges.txt"]:
        (folder / name).write_bytes(gzip.decompress((TOKENIZER / f"{name}.gz").read_bytes()))
    (folder / "tokenizer_config.json").write_bytes((TOKENIZER / "tokenizer_config.json").read_bytes())
    return CLIPTokenizer.from_pretrained(folder)


def main() -> None:
    tok = tokenizer()
    prompts = [" ".join(COCO_STUFF_27), " ".join(CITYSCAPES_27)]
    ids = tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")["input_ids"]

    model = CLIPTextModel.from_pretrained(TINY).eval()
    generator = torch.Generator().manual_seed(20)
    embedding = model.get_input_embeddings().weight
    used = sorted(set(ids.flatten().tolist()) - {49406, 49407})
    with torch.no_grad():
        embedding[used] = torch.randn(len(used), embedding.shape[1], generator=generator) * 0.3
        hidden = model(ids).last_hidden_state.contiguous()

    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        raw = (Path(folder) / "model.safetensors").read_bytes()
    (OUT / "model.safetensors.gz").write_bytes(gzip.compress(raw, 9, mtime=0))
    config = json.loads((TINY / "config.json").read_text())
    (OUT / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file({"ids": ids.to(torch.int64).contiguous(), "hidden": hidden}, OUT / "embeddings.safetensors")
    print(f"{len(used)} token rows set; {OUT}")


if __name__ == "__main__":
    main()
