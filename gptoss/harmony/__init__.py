"""The Harmony chat format of gpt-oss, in pure Python (no dependency on openai-harmony).

Rendering matches openai-harmony 0.0.8 token for token; parsing accepts what it accepts and,
unlike it, never raises on malformed model output (see :class:`StreamParser`).
"""

from gptoss.harmony.errors import HarmonyError
from gptoss.harmony.json_io import (
    load_conversation,
    load_tokens,
    messages_from_json,
    messages_to_json,
)
from gptoss.harmony.messages import (
    Author,
    Content,
    Conversation,
    Message,
    Role,
    TextContent,
    content_from_dict,
)
from gptoss.harmony.parser import (
    MessageSpan,
    ParseWarning,
    StreamParser,
    StreamState,
    parse_messages_from_completion_tokens,
)
from gptoss.harmony.render import (
    RenderConfig,
    conversation_has_function_tools,
    developer_content_text,
    render,
    render_conversation,
    render_conversation_for_completion,
    render_conversation_for_training,
    stop_tokens,
    stop_tokens_for_assistant_actions,
    system_content_text,
    visible_messages,
)
from gptoss.harmony.schema_ts import json_schema_to_typescript, render_tools_section
from gptoss.harmony.system import (
    DEFAULT_KNOWLEDGE_CUTOFF,
    EFFORT_NAMES,
    ChannelConfig,
    DeveloperContent,
    EffortName,
    ReasoningEffort,
    SystemContent,
    ToolDescription,
    ToolNamespaceConfig,
)

__all__ = [
    "DEFAULT_KNOWLEDGE_CUTOFF",
    "EFFORT_NAMES",
    "EffortName",
    "Author",
    "ChannelConfig",
    "Content",
    "Conversation",
    "DeveloperContent",
    "HarmonyError",
    "Message",
    "MessageSpan",
    "ParseWarning",
    "ReasoningEffort",
    "RenderConfig",
    "Role",
    "StreamParser",
    "StreamState",
    "SystemContent",
    "TextContent",
    "ToolDescription",
    "ToolNamespaceConfig",
    "content_from_dict",
    "conversation_has_function_tools",
    "developer_content_text",
    "json_schema_to_typescript",
    "load_conversation",
    "load_tokens",
    "messages_from_json",
    "messages_to_json",
    "parse_messages_from_completion_tokens",
    "render",
    "render_conversation",
    "render_conversation_for_completion",
    "render_conversation_for_training",
    "render_tools_section",
    "stop_tokens",
    "stop_tokens_for_assistant_actions",
    "system_content_text",
    "visible_messages",
]
