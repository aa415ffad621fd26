"""Looking inside the model: its next-token distribution and what sampling keeps of it (`next_tokens`), one word's
hidden state through every layer in two sentences (`contextual`), what each layer would predict (`logit_lens`),
every head's attention weights (`attention`), and which input tokens a token's probability rests on
(`attribution`: gradient × input and integrated gradients).

Each view checks its input and tokenizes in the caller's thread, then runs its forward pass through `Engine.inspect`:
on the local engine's worker thread between two decoding steps (so it shares the one model with the running chats and
a chat waits for one step of it at most; core/engine/jobs.py), in a GPU call of its own on ZeroGPU; a remote engine
has no weights here and says so. The part that runs there is a module-level function of plain arguments returning
plain data; names and formatting happen back in the caller's thread.

May import core.model, core.text, core.embeddings, core.engine's public API (base, settings, sampling, lean_step),
core.work (progress), core.config, core.errors and core.checks; only demo/ imports it.
"""
