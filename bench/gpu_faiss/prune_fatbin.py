"""Keep only one GPU architecture's code in a shared library's CUDA fat binaries, in place.

Each fat binary in the .nv_fatbin section holds one entry per architecture (SASS or PTX). The entries for `--keep`
are moved to the front of their fat binary, its size field is cut to them, and the bytes after it are zeroed: the
file keeps its layout (no relinking), and the zeros compress to almost nothing.

    python prune_fatbin.py libfaiss.so --keep 90
"""

from __future__ import annotations

import argparse
import struct
from pathlib import Path

FATBIN_MAGIC = 0xBA55ED50


def nv_fatbin_section(data: bytes) -> tuple[int, int]:
    """(offset, size) of the .nv_fatbin section of a 64-bit little-endian ELF file."""
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    names = struct.unpack_from("<IIQQQQIIQQ", data, shoff + shstrndx * shentsize)[4]
    for i in range(shnum):
        name, _, _, _, offset, size, *_ = struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)
        if data[names + name: data.index(b"\0", names + name)] == b".nv_fatbin":
            return offset, size
    raise SystemExit("no .nv_fatbin section")


def prune(path: Path, keep: set[int]) -> tuple[int, int, dict[int, int]]:
    data = bytearray(path.read_bytes())
    start, size = nv_fatbin_section(bytes(data))
    pos, end, kept_bytes, dropped_bytes, archs = start, start + size, 0, 0, {}
    while pos + 16 <= end:
        magic, _, header, body = struct.unpack_from("<IHHQ", data, pos)
        if magic != FATBIN_MAGIC:
            pos += 8
            continue
        first, last, kept = pos + header, pos + header + body, bytearray()
        p = first
        while p < last:
            _, _, entry_header, payload = struct.unpack_from("<HHIQ", data, p)
            arch, = struct.unpack_from("<I", data, p + 28)
            archs[arch] = archs.get(arch, 0) + 1
            if arch in keep:
                kept += data[p: p + entry_header + payload]
            p += entry_header + payload
        if not kept:
            raise SystemExit(f"a fat binary at {pos:#x} has no entry for {sorted(keep)}; refusing to empty it")
        data[first: first + len(kept)] = kept
        data[first + len(kept): last] = bytes(last - first - len(kept))
        struct.pack_into("<Q", data, pos + 8, len(kept))
        kept_bytes += len(kept)
        dropped_bytes += body - len(kept)
        pos = last
    path.write_bytes(bytes(data))
    return kept_bytes, dropped_bytes, archs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("library", type=Path)
    parser.add_argument("--keep", type=int, nargs="+", default=[90], help="architectures to keep, e.g. 90 for sm_90")
    args = parser.parse_args()
    kept, dropped, archs = prune(args.library, set(args.keep))
    print(f"{args.library.name}: kept {kept / 2**20:.1f} MiB of GPU code, zeroed {dropped / 2**20:.1f} MiB; "
          f"entries per arch before: {dict(sorted(archs.items()))}")


if __name__ == "__main__":
    main()
