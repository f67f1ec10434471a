"""Translation between the Anthropic Messages API and llama-server's chat completions, as
pure functions (the HTTP routes are `guardian_proxy.anthropic_http`).

`build_chat_body` validates a /v1/messages body and plans the llama-server request;
`message_from_openai` converts a whole answer and `MessageStream` a streamed one, chunk by
chunk, into Anthropic's events (`sse_event` encodes them). Failures are `AnthropicError`.
"""

from guardian_proxy.anthropic_api.errors import AnthropicError, error_body, error_type
from guardian_proxy.anthropic_api.request import MessagesPlan, build_chat_body, convert_messages
from guardian_proxy.anthropic_api.response import (
    MessageStream,
    message_from_openai,
    sse_event,
    usage_from_openai,
)

__all__ = [
    "AnthropicError",
    "MessageStream",
    "MessagesPlan",
    "build_chat_body",
    "convert_messages",
    "error_body",
    "error_type",
    "message_from_openai",
    "sse_event",
    "usage_from_openai",
]
