"""Write stub `libcuvs` and `libraft` packages into an unpacked faiss-gpu-cu13-cuvs site folder, and make its GPU
indexes default to FAISS's own kernels (use_cuvs=False).

faiss-gpu-cu13-cuvs links libcuvs.so (a wheel larger than everything that may travel to the lent GPU machine) for its
cuVS index types, which Token Lab never uses. The stub libcuvs.so defines every cuVS (and raft) symbol the FAISS
libraries import, each as a function that names itself and aborts, so the libraries load; FAISS's own GPU kernels
(use_cuvs=False, set by NO_CUVS) never call them. Part of bench/gpu_faiss/prepare.sh's repack, which is unverified
on a GPU: the device command probes it first.

    python cuvs_stub.py SITE
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

LOADER = '''"""Stub: loads the stub {name}.so that stands in for the real {name} (see bench/gpu_faiss/cuvs_stub.py)."""

import ctypes
import os


def load_library():
    path = os.path.join(os.path.dirname(__file__), "lib64", "{name}.so")
    return ctypes.CDLL(path, ctypes.RTLD_GLOBAL) if os.path.isfile(path) else None
'''

NO_CUVS = """

# Token Lab's carried build (bench/gpu_faiss/): libcuvs is a stub, so every GPU index uses FAISS's own kernels, as the
# faiss-gpu wheel (built without cuVS) does.
class GpuClonerOptions(GpuClonerOptions):
    def __init__(self, *args):
        super().__init__(*args)
        self.use_cuvs = False


class GpuMultipleClonerOptions(GpuMultipleClonerOptions):
    def __init__(self, *args):
        super().__init__(*args)
        self.use_cuvs = False


class GpuIndexFlatConfig(GpuIndexFlatConfig):
    def __init__(self, *args):
        super().__init__(*args)
        self.use_cuvs = False
"""


def symbols(
library: Path, defined: bool) -> set[str]:
    flag = "--defined-only" if defined else "--undefined-only"
    out = subprocess.run(["nm", "-D", flag, str(library)], check=True, capture_output=True, text=True).stdout
    return {line.split()[-1].split("@")[0] for line in out.splitlines() if line.strip()}


def main(site: Path) -> None:
    users = [*site.glob("faiss/_swigfaiss*.so"), *site.glob("faiss_gpu_*.libs/libfaiss*.so")]
    providers = [*site.glob("faiss_gpu_*.libs/*.so*"), *site.glob("librmm/lib64/*.so"),
                 *site.glob("rapids_logger/lib64/*.so")]
    wanted = set().union(*(symbols(u, defined=False) for u in users))
    wanted -= set().union(*(symbols(p, defined=True) for p in providers))
    stubs = sorted(s for s in wanted if "cuvs" in s or s.startswith("_ZN4raft"))
    if not stubs:
        raise SystemExit("no cuVS symbols to stub: is this a faiss-gpu-cu13-cuvs site folder?")
    body = ['#include <stdio.h>', '#include <stdlib.h>',
            'static void die(const char *s) { fprintf(stderr, "stub libcuvs.so: %s was called\\n", s); abort(); }']
    body += [f'void {s}(void) {{ die("{s}"); }}' for s in stubs]
    for name in ("libcuvs", "libraft"):
        (site / name / "lib64").mkdir(parents=True, exist_ok=True)
        (site / name / "__init__.py").write_text(LOADER.format(name=name))
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "stub.c"
        source.write_text("\n".join(body) + "\n")
        subprocess.run(["cc", "-shared", "-fPIC", "-O1", "-Wl,-soname,libcuvs.so", "-o",
                        str(site / "libcuvs" / "lib64" / "libcuvs.so"), str(source)], check=True)
    with (site / "faiss" / "__init__.py").open("a") as init:
        init.write(NO_CUVS)
    print(f"stub libcuvs.so: {len(stubs)} symbols; GPU indexes default to use_cuvs=False")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
