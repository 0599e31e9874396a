"""Write the bundled CLIP ViT-L/14 tokenizer files from the BPE merges open_clip ships.

Why: the server must tokenize offline, so the SD1 tokenizer lives inside the package
(webui_api/engine/loading/tokenizers/clip-vit-l-14/). The only public, pip-installable
source of the CLIP merges table is the `open-clip-torch` wheel; this script rebuilds the
standard CLIP vocabulary from it and writes a Hugging Face tokenizer directory.

Run once (needs the `tokenizer` extra): python scripts/make_clip_tokenizer.py [--out DIR]
"""

from __future__ import annotations

import argparse
import gzip
import json
from importlib.util import find_spec
from pathlib import Path

MERGES_RESOURCE = ("open_clip", "bpe_simple_vocab_16e6.txt.gz")
MERGE_COUNT = 49152 - 256 - 2  # CLIP keeps this many merges: 48894
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
VOCAB_SIZE = 49408
MAX_LENGTH = 77
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "webui_api/engine/loading/tokenizers/clip-vit-l-14"


def byte_alphabet() -> list[str]:
    """The 256 printable stand-ins GPT-2/CLIP byte-level BPE uses for raw bytes, in byte order
    of the printable ranges first, then the remapped rest (the order fixes the token ids)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in printable] + [chars[b] for b in range(256) if b not in printable]


def merges_path() -> Path:
    """Where the open_clip wheel keeps its merges table, found without importing open_clip
    (its package import pulls in torch and torchvision, seconds for one data file)."""
    package, name = MERGES_RESOURCE
    spec = find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {package!r} not found: install the 'tokenizer' extra (open-clip-torch)")
    return Path(list(spec.submodule_search_locations)[0]) / name


def read_merges() -> list[tuple[str, str]]:
    """The first MERGE_COUNT merges of open_clip's table (its line 0 is a version header)."""
    raw = merges_path().read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")[1 : MERGE_COUNT + 1]
    merges = [tuple(line.split()) for line in lines]
    bad = [m for m in merges if len(m) != 2]
    if bad or len(merges) != MERGE_COUNT:
        raise ValueError(f"expected {MERGE_COUNT} merge pairs, got {len(merges)} ({len(bad)} malformed)")
    return merges  # type: ignore[return-value]


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """CLIP's id order: byte chars, their end-of-word forms, one token per merge, BOS, EOS."""
    base = byte_alphabet()
    tokens = base + [c + "</w>" for c in base] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"expected a {VOCAB_SIZE}-token vocabulary, built {len(vocab)}")
    return vocab


def tokenizer_config() -> dict:
    """Settings of openai/clip-vit-large-patch14's tokenizer (lower-case, 77 tokens, EOS pads)."""
    return {
        "tokenizer_class": "CLIPTokenizer",
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "model_max_length": MAX_LENGTH,
        "do_lower_case": True,
        "add_prefix_space": False,
        "errors": "replace",
    }


def write_tokenizer(out: Path) -> None:
    """Write vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json."""
    merges = read_merges()
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(build_vocab(merges), ensure_ascii=False), encoding="utf-8")
    merge_lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (out / "merges.txt").write_text("\n".join(merge_lines) + "\n", encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(), indent=2) + "\n", encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    args = parser.parse_args()
    write_tokenizer(args.out)
    print(f"wrote CLIP tokenizer ({VOCAB_SIZE} tokens) to {args.out}")


if __name__ == "__main__":
    main()
