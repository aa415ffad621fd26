"""`transformers serve`, unchanged but for one log line: how many tokens a generation had made when it was aborted.

The server aborts `generate()` when its client goes away (its streamer raises at the next token), but says nothing;
this line is the server's own evidence for the Stop tests in tests/test_remote.py. Run it as the CLI:
`python tests/transformers_serve.py serve MODEL --port ...`, and read the line back with `aborted_generations`.
"""

from __future__ import annotations

import re
import sys

ABORTED = re.compile(r"generation aborted after (\d+) tokens")  # the line, as `log_aborts` writes it


def aborted_generations(log: str) -> list[int]:
    """The token counts of the generations the server aborted, in order, from its log."""
    return [int(n) for n in ABORTED.findall(log)]


def log_aborts() -> None:
    """Wrap the streamer's `put`, where an abort surfaces inside `generate()`, with the log line."""
    from transformers.cli.serving import utils
    from transformers.utils import logging

    logger = logging.get_logger("transformers.cli.serving")
    put = utils.DirectStreamer.put

    def put_or_log(self: utils.DirectStreamer, value) -> None:
        try:
            put(self, value)
        except utils._GenerationCancelled:
            logger.warning(f"generation aborted after {self.total_tokens} tokens")
            raise

    utils.DirectStreamer.put = put_or_log


if __name__ == "__main__":
    log_aborts()
    from transformers.cli.transformers import main

    sys.argv[0] = "transformers"
    sys.exit(main())
