"""core's progress reports, `progress(done, total, stage)` (core/work/progress.py), on gradio's progress bar: a bar
with the stage's name while work runs, the stage alone (no bar) while it waits for its turn.

    def handler(text: str, progress: gr.Progress = gr.Progress()):
        return logit_lens(engine, text, progress=shown_on(progress, "chunks"))
"""

from __future__ import annotations

import gradio as gr

from core.work.progress import Progress


def shown_on(bar: gr.Progress, unit: str) -> Progress:
    def report(done: int, total: int, stage: str) -> None:
        bar((done, total) if total else None, desc=stage, unit=unit)

    return report
