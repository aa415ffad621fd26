"""The background process that computes a UMAP projection, so a chat keeps streaming while it runs: it lowers its
own priority and runs numba and BLAS on the threads it is given, reads the rows from a .npy file and writes the
coordinates atomically (a half-written file is never read as a map).

    python -m core.embeddings.projection_worker ROWS.npy OUT.npy '{"dims": 2, "n_neighbors": 15, ...}'
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import numpy as np

NICENESS = 10  # below the app's chats and lookups: the scheduler serves them first


def main(argv: list[str]) -> int:
    rows_path, out_path, settings_json = argv
    with contextlib.suppress(OSError):
        os.nice(NICENESS)
    from core.embeddings.projection import UmapSettings, umap

    rows = np.load(rows_path)
    coords = umap(rows, UmapSettings(**json.loads(settings_json)))
    out = Path(out_path)
    tmp = out.with_name(f"{out.stem}.tmp{os.getpid()}.npy")
    np.save(tmp, coords)
    tmp.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
