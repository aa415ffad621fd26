"""Conversations a person keeps in their own browser: the conversation and its settings (conversation), the list as
it is stored, versioned and merged between tabs (store), and the files it is exported to and imported from
(transfer). The server never keeps them; demo/ carries the stored text between the browser and these functions.
May import core.text, core.errors and core.checks (and the engine's logprobs shape, for type hints only)."""
