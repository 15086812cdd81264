"""Write the CLIP tokenizer fixture and transformers' token ids for the parity test.

    python tools/reference/tokenizer_reference.py
    # writes crates/diffseg-sd/tests/fixtures/clip-tokenizer/

The tokenizer is OpenAI CLIP's published BPE (`bpe_simple_vocab_16e6.txt.gz`, shipped
in the open_clip_torch wheel), converted to the `vocab.json` + `merges.txt` pair that
diffusers saves in a model's `tokenizer/` folder, the conversion transformers' own
CLIP tokenizer uses: 256 byte symbols, the same with the end-of-word mark `</w>`,
one token per merge (48 894), then `<|startoftext|>` and `<|endoftext|>`, 49 408 in
all. SD 1.5's tokenizer is this vocabulary. The two files are stored gzipped (the
test unpacks them into a temporary folder); `tokenizer_config.json` is SD 1.5's
settings (77 tokens, `<|endoftext|>` as padding).

`ids.json` holds, for a few hundred strings, the ids transformers' `CLIPTokenizer`
gives with SD's call: padding to 77, truncation at 77.
"""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path

import open_clip
import transformers
from transformers import CLIPTokenizer

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "crates/diffseg-sd/tests/fixtures/clip-tokenizer"
MAX_LENGTH = 77


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (as CLIP uses it)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """open_clip's `SimpleTokenizer` construction, with transformers' special-token names."""
    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols]
    vocab += ["".join(merge.split()) for merge in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408, len(vocab)
    return {token: i for i, token in enumerate(vocab)}, merges


def strings() -> list[str]:
    """Case, punctuation, unicode, numbers, multi-token words, whitespace, long texts."""
    fixed = [
        "", " ", "a", "A", "sky", "Sky", "SKY", "road surface", "person", "a photo of a cat",
        "A Photo Of A Cat.", "hello, world!", "hello,world", "what?!", "...", "--", "(x)",
        "[bracketed] {curly} <angle>", "email@example.com", "https://example.com/a?b=c&d=e",
        "C++ & C#", "50% off", "$3.99", "#hashtag", "@mention", "a/b\\c", "semi;colon:colon",
        "don't", "it's", "we're", "they've", "I'm", "you'll", "he'd", "DON'T", "IT'S",
        "O'Neil", "rock 'n' roll", "'quoted'", '"double quoted"', "`backtick`",
        "café", "cafe\u0301", "naïve résumé", "Ångström", "über straße", "ÉCOLE", "ﬁnance",
        "São Paulo", "Kraków", "İstanbul", "ǅ", "µ", "Ω", "ﬀ",
        "東京", "日本語のテキスト", "中文分词测试", "한국어", "Ελληνικά", "русский текст",
        "עברית", "العربية", "हिन्दी", "ไทย", "emoji 😀", "👍🏽", "👨‍👩‍👧", "🇫🇷", "❤️", "☃",
        "0", "1", "42", "123456789", "3.14159", "1,000,000", "2nd", "10x", "v1.5", "0xFF",
        "½", "²", "٣", "一二三", "Ⅻ",
        "antidisestablishmentarianism", "pneumonoultramicroscopicsilicovolcanoconiosis",
        "supercalifragilisticexpialidocious", "floccinaucinihilipilification",
        "electroencephalography", "hippopotomonstrosesquippedaliophobia",
        "tab\tseparated", "new\nline", "carriage\r\nreturn", "  leading", "trailing  ",
        "many     spaces", "\u00a0nbsp\u00a0", "ideographic\u3000space", "zero\u200bwidth",
        "\t\n \r", "mixed \t\n whitespace",
        "<|startoftext|>", "<|endoftext|>", "a <|endoftext|> b", "<|startoftext|>x",
        "<tag>", "</w>", "a</w>b",
        "wall-other-merged", "tree-merged", "playingfield", "traffic sign", "sidewalk",
        "motorcycle", "TV monitor", "hair drier", "teddy bear", "cell phone",
    ]
    words = ["sky", "road", "Person", "CAR", "tree", "büilding", "猫", "🙂", "x2", "co-op",
             "rock'n'roll", "a.b", "Zebra", "water", "grass", "sand", "snow", "ocean"]
    generated = []
    for i in range(len(words)):
        for j in range(len(words)):
            if (i * 7 + j * 3) % 2 == 0:
                sep = [" ", ", ", "-", "  ", "\t", "/"][(i + j) % 6]
                generated.append(words[i] + sep + words[j])
    long = [
        " ".join(["word"] * 100),
        " ".join(words * 6),
        "a, " * 60,
        "antidisestablishmentarianism " * 20,
        "東京" * 80,
        "😀" * 90,
        " ".join(str(n) for n in range(200)),
        "one two three four five six seven eight nine ten " * 8,
        " ".join(["x"] * 75),
        " ".join(["x"] * 76),
        " ".join(["x"] * 77),
    ]
    return fixed + generated + long


def main() -> None:
    vocab, merges = clip_vocab_and_merges()
    config = {
        "model_max_length": MAX_LENGTH,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "tokenizer_class": "CLIPTokenizer",
    }
    OUT.mkdir(parents=True, exist_ok=True)
    vocab_text = json.dumps(vocab, ensure_ascii=False)
    merges_text = "#version: 0.2\n" + "\n".join(merges) + "\n"
    # mtime=0: the same input gives the same bytes.
    (OUT / "vocab.json.gz").write_bytes(gzip.compress(vocab_text.encode(), 9, mtime=0))
    (OUT / "merges.txt.gz").write_bytes(gzip.compress(merges_text.encode(), 9, mtime=0))
    (OUT / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        (folder / "vocab.json").write_text(vocab_text, encoding="utf-8")
        (folder / "merges.txt").write_text(merges_text, encoding="utf-8")
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
        tokenizer = CLIPTokenizer.from_pretrained(folder)
        texts = strings()
        # SD pipelines' call (diffusers `encode_prompt`).
        ids = tokenizer(texts, padding="max_length", max_length=MAX_LENGTH, truncation=True)["input_ids"]
    assert all(len(row) == MAX_LENGTH for row in ids)
    assert ids[0] == [49406] + [49407] * 76, ids[0]
    cases = [{"text": text, "ids": row} for text, row in zip(texts, ids)]
    fixture = {"transformers": transformers.__version__, "max_length": MAX_LENGTH, "cases": cases}
    (OUT / "ids.json").write_text(json.dumps(fixture, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{len(cases)} strings, {sum(r.count(49407) < 76 and 1 or 0 for r in ids)} non-empty")


if __name__ == "__main__":
    main()
