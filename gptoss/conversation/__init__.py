"""Conversations over the engine: Harmony messages in, one assistant turn (its messages) out."""

from gptoss.conversation.session import ChatSession, ChatSettings, TurnDelta, TurnResult

__all__ = ["ChatSession", "ChatSettings", "TurnDelta", "TurnResult"]
