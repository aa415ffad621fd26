"""The few exceptions core/ raises on purpose. The UI edge turns each into a message a person understands."""


class TokenLabError(Exception):
    """Base class: its message is written for the user and is safe to show as it is."""


class ModelLoadError(TokenLabError):
    """The model could not be loaded (unknown id, no network, not enough memory, broken files)."""


class ModelNotReadyError(TokenLabError):
    """A request arrived while the model is still loading, or after loading failed."""


class InvalidInputError(TokenLabError):
    """The user's input cannot be processed as given (too long, malformed ids, unknown word...)."""


class ContextOverflowError(InvalidInputError):
    """A single message does not fit in the model's context window."""


class BusyError(TokenLabError):
    """Too many requests are waiting; the caller should try again shortly."""


class UnavailableError(TokenLabError):
    """What was asked needs something this server does not have (e.g. the model's weights, when chat runs on a
    remote server)."""


class GenerationError(TokenLabError):
    """Generation failed part-way; the message says why."""
