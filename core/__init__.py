"""Token Lab's core: everything but the UI. It never imports gradio.

The map (each subpackage's __init__ says what lives there and what it may import):

- `config.py`   AppConfig (every setting, from flags and environment) and RequestLimits.
- `errors.py`   the few exceptions core raises on purpose; their messages are written for people.
- `checks.py`   checking what a request sends (types and ranges) before any work starts.
- `host.py`     ModelHost: loads the model in the background and holds what is built on it.
- `model/`      getting a model: the hub, a folder, the bundled GGUF, the embeddings alone; CPU kernels.
- `text/`       text as tokens: token views, tokenizers to compare, conversations, the exact prompt.
- `embeddings/` the vocabulary in its embedding space: tables, queries, exact search, the views, the evaluation.
- `engine/`     chat: the stream, the engine contract, the local scheduler and batch decoder, remote and ZeroGPU.
- `inside/`     inside the model: next-token probabilities, contextual embeddings, the logit lens.
- `work/`       heavy work beside the chats: the fair share, turns, cancel tokens, progress.
- `chat/`       conversations kept in the person's browser: the conversation, its store, export and import.

Arrows point one way: engine → text → model, embeddings → text.token_strings, host → all,
inside → engine, embeddings, text, model; engine, embeddings, inside → work; chat → text.
tests/test_import_rules.py checks them.
"""
