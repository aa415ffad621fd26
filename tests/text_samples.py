"""Texts that exercise what tokenizers disagree on, for comparing a converted tokenizer with its reference."""

from __future__ import annotations

import random
from importlib import metadata
from pathlib import Path

MIXED = (
    "English and CAPITALIZATION\n"
    "🎵 鸟\n"
    "show_tokens False None elif == >= else: two tabs:\"\t\t\" Three tabs: \"\t\t\t\"\n"
    "12.0*50=600\n"
    "    def f(x):\n\tif x  >=  1:\n\t\treturn x   # runs   of     spaces\n\n\n"
    "中文分词很有趣。日本語のテキスト、한국어 텍스트.\n"
    "Ünïcödé naïve café — “quotes” and ’apostrophes’ it's I'LL we'RE\r\n"
    "emoji: 👩‍👩‍👧‍👦 🇫🇷 ✌🏽 ɑ̃ e\u0301\u200b zero\u00a0width\n"
    "numbers 1234567890 3.14159 -42 1e-9 0x1F\n"
    "trailing spaces   \n   leading and trailing   "
)


def random_unicode(seed: int, chars: int) -> str:
    """Random code points from scripts and symbol blocks, with spaces and newlines, as adversarial text."""
    rng = random.Random(seed)
    blocks = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF), (0x900, 0x97F),
              (0xE00, 0xE7F), (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0x1F300, 0x1F6FF),
              (0x2000, 0x206F), (0x300, 0x36F)]
    out = []
    while len(out) < chars:
        r = rng.random()
        if r < 0.1:
            out.append(rng.choice([" ", "  ", "\n", "\t", "   ", "\r\n", " \n "]))
        else:
            lo, hi = rng.choice(blocks)
            out.extend(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 8)))
    return "".join(out)


def corpus(max_bytes: int = 400_000) -> list[str]:
    """A few hundred KB of varied text: standard-library Python, installed packages' READMEs, random Unicode."""
    stdlib = Path(random.__file__).parent
    code = [path.read_text(encoding="utf-8", errors="replace") for path in sorted(stdlib.glob("*.py"))[::7]]
    readmes = sorted((d.metadata["Name"] or "", d.read_text("METADATA") or "") for d in metadata.distributions())
    docs = [text for _name, text in readmes[::3] if text]
    texts = [text for pair in zip(code, docs, strict=False) for text in pair]
    out, size = [MIXED], 0
    for text in texts:
        out.append(text[:40_000])
        size += len(out[-1].encode())
        if size > max_bytes * 3 // 4:
            break
    out.extend(random_unicode(seed, 4_000) for seed in range(25))
    return out
