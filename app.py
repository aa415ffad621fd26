"""Token Lab entry point: `python app.py [flags]`, `gradio app.py`, or a Hugging Face Space.

The UI comes up at once while the model loads in the background (progress in the console and the header).
A model asked for explicitly that cannot be loaded ends the program with exit status 2 and a one-line reason.
With `--mcp` the API endpoints are also MCP tools, at /gradio_api/mcp/.
"""

from __future__ import annotations

import contextlib
import gc
import sys

# Start-up allocates hundreds of thousands of long-lived objects (torch, transformers, gradio, the model); with the
# collector on, each full collection meanwhile rescanned all of them with the GIL held. It runs again once they are
# frozen (below), and its later full collections skip them, so serving is not paused by them.
gc.disable()

from core.config import AppConfig  # noqa: E402
from core.engine import zerogpu  # noqa: E402, F401  (first: on ZeroGPU `spaces` must be imported before torch)
from core.host import ModelHost  # noqa: E402

config = AppConfig.from_args()
host = ModelHost(config).start()  # loading starts now, while gradio is imported and the UI is built below

import gradio  # noqa: E402, F401  (imported here, in parallel with the loader thread's torch and transformers)

host.wait_for_imports()
from demo import build_demo, launch_options  # noqa: E402

demo = build_demo(host, config)
gc.freeze()
gc.enable()


def main() -> int:
    demo.launch(prevent_thread_lock=True, **launch_options(config))
    host.wait()
    if host.error is not None and config.model_explicit:
        print(f"error: {host.error}", file=sys.stderr, flush=True)
        demo.close()
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        demo.block_thread()
    return 0


if __name__ == "__main__":
    sys.exit(main())
