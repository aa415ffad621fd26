"""Chat engines. `base.Engine` is the contract every engine keeps (prompt building and checks, limits, reservations,
stats; `submit`, `describe`, `close`), and `stream.ChatStream` is what a request reads. The local engine is
`local.ChatEngine` (the scheduler: admission, burst gathering, queue limits) over `batch_decoder.BatchDecoder` (the
model runner; `lean_decoder.LeanBatchDecoder` with `lean_step` where that computes the same bits faster), `sampling`
(and each answer token's log-probabilities, shaped by `logprobs`), `jobs` (inspections on the worker),
`prefix_cache`, `capacity` and `heap`; `remote` chats through an OpenAI-compatible server, `zerogpu_engine` through
Hugging Face ZeroGPU. May import core.model, core.text, core.work, core.config, core.errors and core.checks;
never core.embeddings or core.host.

This file imports nothing: app.py imports `core.engine.zerogpu` before torch (ZeroGPU requires it)."""
