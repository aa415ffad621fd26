"""Gradio UI: layout and wiring only; all logic lives in core/."""

from demo.blocks import build_demo, launch_options

__all__ = ["build_demo", "launch_options"]
