"""Text as a model sees it: tokens with their pieces and character spans, the tokenizers the Tokens tab compares
(registry; OpenAI's vocabularies from packages in packaged; what each does with text in facts), conversations as plain
messages, and the exact prompt a chat template gives (special-token safe, fitted to the context). May import
core.model (to find the bundled tokenizer), core.config, core.errors and core.checks."""
