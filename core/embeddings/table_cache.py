"""A small on-disk cache for tables derived from a tokenizer (JSON, so reading a cache file never runs code).

Building the vocabulary tables (each of tens of thousands of tokens decoded, classified, keyed) is pure Python that
would run at every start; reading them back costs a fraction of that. The key hashes everything the tables derive
from, so a changed tokenizer or a changed table format never reads a stale file:

    tables, cached = cached_json("vocab-tables", ["v1", tokenizer_json], build, Path("~/.cache/token-lab"))
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def cache_key(parts: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return digest.hexdigest()[:24]


def cached_json(kind: str, key_parts: Iterable[str], build: Callable[[], dict[str, Any]],
                cache_dir: Path | None) -> tuple[dict[str, Any], bool]:
    """`build()`'s result, read from `cache_dir/kind/KEY.json` when present; returns (data, came_from_cache).
    Without a cache_dir, or when the cache cannot be read or written, it simply builds."""
    if cache_dir is None:
        return build(), False
    path = Path(cache_dir) / kind / f"{cache_key(key_parts)}.json"
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f), True
    except FileNotFoundError:
        pass
    except (OSError, ValueError):
        log.warning("ignoring an unreadable cache file %s", path)
    data = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        tmp.replace(path)
    except OSError:
        log.warning("could not write the cache file %s", path, exc_info=True)
    return data, False
