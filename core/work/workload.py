"""The host's heavy-work rules in one object: the fair share the chats keep, and the turns evaluations take. The
chat engine's worker and every evaluation use the same one, whichever door a request came in by.

    >>> work = Workload()
    >>> sorted(work.stats())
    ['evaluations', 'fair_share']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.work.fair_share import FairShare
from core.work.turns import Turns

EVALUATIONS_WAITING = 4  # evaluations in line behind the one running; more are told the server is busy


@dataclass
class Workload:
    share: FairShare = field(default_factory=FairShare)
    evaluations: Turns = field(default_factory=lambda: Turns("evaluations", running=1, waiting=EVALUATIONS_WAITING))

    def stats(self) -> dict[str, Any]:
        return {"fair_share": self.share.stats(), "evaluations": self.evaluations.stats()}
