"""User-facing errors: one clear line naming what was wrong, expected against found."""


class GptossError(Exception):
    """An error caused by user input (a file, a tensor, a config field, a flag).

    The CLI prints ``str(error)`` on one line, without a traceback (``--debug`` shows it).
    """


class ConfigError(GptossError):
    """A model configuration that is unknown, inconsistent or unreadable."""


class CheckpointError(GptossError):
    """A checkpoint that is missing, truncated, or holds a missing, extra or misshaped tensor."""


class TokenizerError(GptossError):
    """The tokenizer's BPE file cannot be found or does not match its expected hash."""
