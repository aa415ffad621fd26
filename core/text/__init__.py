"""Text as a model sees it: tokens with their pieces and character spans, the tokenizers the Tokens tab compares
(registry; OpenAI's vocabularies from packages in packaged; what each does with text in facts; which one a request
names in lookup; several side by side in comparison), conversations as plain messages, and the exact prompt a chat
template gives (special-token safe, fitted to the context; shown as tokens in template_view). May import core.model
(to find the bundled tokenizer), core.config, core.errors and core.checks."""
