"""How long work tells its caller how far it has got, between two of its steps: `progress(done, total, stage)`;
`total` 0 while it waits for its turn (`stage` then says what for). The page shows it as a progress bar, and the
engine's worker reports an inspection's through the request waiting for it (core/engine/jobs.py).

    >>> def report(done: int, total: int, stage: str) -> None:
    ...     print(f"{stage}: {done}/{total}")
    >>> report(3, 12, "reading the text")
    reading the text: 3/12
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[int, int, str], None]
