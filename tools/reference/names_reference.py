"""Reference for naming segments from a vocabulary (issue 20) on the tiny SD fixture.

One UNet pass over the fixture's latent with the empty prompt, as DiffSeg runs it, keeps every
cross-attention (`attn2`) layer's queries (`attn.to_q` of its input). Afterwards each vocabulary
entry is scored against them, as the model itself would attend to a prompt holding it:

1. each 77-token prompt chunk through the fixture's CLIP text encoder (one pass per chunk);
2. per layer, keys `attn.to_k(context)` and the probabilities exactly as diffusers computes them
   (`attn.get_attention_scores`: softmax over the 77 positions of `Q K^T / sqrt(head_dim)`),
   averaged over heads;
3. per entry, the mean over its token columns;
4. per resolution, the mean over its layers; upsampled to the largest grid with
   `interpolate(bilinear, align_corners=False)`; summed with weights side / sum of sides;
5. each entry's map divided by its L2 norm over the grid (as google/diffseg's `get_semantics`);
6. per segment of a fixed label map, the mean of each entry's map resampled bilinearly
   (half-pixel) to the label map's size over the segment's pixels; the name is the best entry.

Entries are given as token ids (no tokenizer needed); ids with non-zero embedding rows in the
fixture's text encoder are used so that entries differ. Writes
crates/diffseg/tests/fixtures/names/names.safetensors.

Run: /work/refvenv/bin/python tools/reference/names_reference.py
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "crates/diffseg-sd/tests/fixtures/tiny"
OUT = ROOT / "crates/diffseg/tests/fixtures/names"
BOS, EOS = 49406, 49407
TOP_K = 3

# Two prompt chunks; each entry is (chunk, token columns). Ids 320, 539, 1125, 2368 have
# non-zero embeddings in the fixture.
CHUNKS = [[BOS, 320, 539, 1125, 2368], [BOS, 2368, 320, 539, 1125]]
ENTRIES = [(0, [1]), (0, [2]), (0, [3, 4]), (1, [1]), (1, [2, 3]), (1, [4])]

# Label map of an image 24 rows x 40 columns (not the latent's shape, nor square): four segments.
LABEL_HEIGHT, LABEL_WIDTH = 24, 40


def label_map() -> torch.Tensor:
    rows = torch.arange(LABEL_HEIGHT)[:, None]
    columns = torch.arange(LABEL_WIDTH)[None, :]
    labels = (rows >= 10).to(torch.int64) * 2 + (columns >= 15).to(torch.int64)
    labels[3:8, 30:37] = 4
    return labels


class QueryCapture:
    """diffusers' `AttnProcessor`, keeping each cross-attention layer's queries (and module)."""

    def __init__(self, calls: list):
        self.calls = calls
        self.inner = AttnProcessor()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, **kwargs):
        if encoder_hidden_states is not None:
            self.calls.append((attn, attn.to_q(hidden_states).detach().clone(), hidden_states.shape[1]))
        return self.inner(attn, hidden_states, encoder_hidden_states, **kwargs)


@torch.no_grad()
def main() -> None:
    unet = UNet2DConditionModel.from_pretrained(TINY / "unet").eval()
    text_encoder = CLIPTextModel.from_pretrained(TINY / "text_encoder").eval()
    io = load_file(TINY / "io.safetensors")
    latent, empty = io["latent"], io["text_embedding"]
    calls: list = []
    unet.set_attn_processor(QueryCapture(calls))
    unet(latent, torch.tensor([300]), encoder_hidden_states=empty)
    assert len(calls) == 16

    ids = torch.full((len(CHUNKS), 77), EOS, dtype=torch.int64)
    for c, chunk in enumerate(CHUNKS):
        ids[c, : len(chunk)] = torch.tensor(chunk)
    contexts = text_encoder(ids).last_hidden_state  # [chunks, 77, 24]

    side = latent.shape[-1]
    per_resolution: dict[int, list[torch.Tensor]] = {}
    for attn, query, queries in calls:
        r = int(round(queries**0.5))
        maps = []
        for chunk, columns in ENTRIES:
            key = attn.to_k(contexts[chunk : chunk + 1])
            probs = attn.get_attention_scores(attn.head_to_batch_dim(query), attn.head_to_batch_dim(key), None)
            mean = probs.mean(0)  # [queries, 77], over heads
            maps.append(mean[:, columns].mean(1).reshape(r, r))
        per_resolution.setdefault(r, []).append(torch.stack(maps))
    total = sum(per_resolution)
    combined = torch.zeros(len(ENTRIES), side, side)
    for r, layers in per_resolution.items():
        mean = torch.stack(layers).mean(0)
        up = F.interpolate(mean[:, None], size=(side, side), mode="bilinear", align_corners=False)[:, 0]
        combined += up * (r / total)
    norms = combined.flatten(1).norm(dim=1)
    entry_maps = combined / norms[:, None, None]

    labels = label_map()
    image_maps = F.interpolate(entry_maps[:, None], size=(LABEL_HEIGHT, LABEL_WIDTH), mode="bilinear", align_corners=False)[:, 0]
    segments = int(labels.max()) + 1
    scores = torch.stack([image_maps[:, labels == s].mean(1) for s in range(segments)])  # [segments, entries]
    top = scores.topk(TOP_K, dim=1)
    ranked = scores.sort(dim=1, descending=True).values
    print("scores\n", scores, "\nnames", top.indices[:, 0].tolist(), "margins", (ranked[:, 0] - ranked[:, 1]).tolist())

    columns = torch.full((len(ENTRIES), 2), -1, dtype=torch.int64)
    for e, (_, cols) in enumerate(ENTRIES):
        columns[e, : len(cols)] = torch.tensor(cols)
    OUT.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            "chunk_ids": ids,
            "entry_chunk": torch.tensor([c for c, _ in ENTRIES], dtype=torch.int64),
            "entry_columns": columns,
            "entry_maps": entry_maps.contiguous(),
            "label_map": labels.to(torch.int64).contiguous(),
            "segment_scores": scores.contiguous(),
            "top_entries": top.indices.contiguous(),
        },
        OUT / "names.safetensors",
    )


if __name__ == "__main__":
    main()
