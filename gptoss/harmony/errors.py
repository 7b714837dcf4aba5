"""Errors raised by the Harmony layer (rendering and JSON interchange; parsing never raises)."""

from gptoss.errors import GptossError


class HarmonyError(GptossError):
    """A conversation that cannot be rendered or a JSON document that is not a Harmony conversation."""
