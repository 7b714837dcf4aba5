"""gptoss: run OpenAI's gpt-oss models end to end, from Python."""

__version__ = "0.1.0"
