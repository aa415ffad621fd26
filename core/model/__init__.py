"""Getting a model ready: loading from the hub, a local folder or the bundled GGUF (dequantized once and cached), the
input embeddings alone for remote-engine mode, and the CPU facts and kernels that make it fast (oneDNN-packed linear
layers). May import core.config, core.errors and core.checks; nothing else in core."""
