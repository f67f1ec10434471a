"""Translation between the Ollama API and llama-server's APIs, as pure functions.

No I/O here: the HTTP routes call `build_*_request` to validate a client body and plan the
llama-server request, then feed llama-server's answer through a translator
(`ChatStreamTranslator`, `GenerateStreamTranslator`) or the embed helpers, and write what
comes out with `ndjson_line` / `json_bytes`. Every validation failure is an `OllamaError`
whose status and message are what Ollama itself would answer.
"""

from guardian_proxy.ollama.chat import ChatPlan, build_chat_request, convert_messages
from guardian_proxy.ollama.durations import KEEP_FOREVER, parse_go_duration, parse_keep_alive
from guardian_proxy.ollama.embed import (
    EmbedPlan,
    LegacyEmbedPlan,
    build_embed_request,
    build_legacy_embeddings_request,
    embed_response,
    l2_normalize,
    legacy_embeddings_response,
)
from guardian_proxy.ollama.encoding import (
    error_line,
    error_object,
    format_rfc3339_nano,
    json_bytes,
    ndjson_line,
    now_rfc3339,
)
from guardian_proxy.ollama.errors import (
    OllamaError,
    model_not_found,
    model_required,
    require_model,
    unsupported_capability,
    upstream_error,
)
from guardian_proxy.ollama.fields import parse_format, parse_think, think_enabled, think_template_kwargs
from guardian_proxy.ollama.generate import GeneratePlan, build_generate_request
from guardian_proxy.ollama.options import (
    LOAD_OPTIONS,
    OLLAMA_DEFAULT_OPTIONS,
    RUNTIME_OPTIONS,
    MappedOptions,
    map_options,
    stray_root_options,
)
from guardian_proxy.ollama.responses import (
    chat_load_response,
    chat_response_from_openai,
    generate_load_response,
    generate_response_from_llama,
)
from guardian_proxy.ollama.stream import ChatStreamTranslator, GenerateStreamTranslator, done_reason_for
from guardian_proxy.ollama.tools import ToolCallAccumulator, new_tool_call_id, normalize_tools

__all__ = [
    "KEEP_FOREVER",
    "LOAD_OPTIONS",
    "OLLAMA_DEFAULT_OPTIONS",
    "RUNTIME_OPTIONS",
    "ChatPlan",
    "ChatStreamTranslator",
    "EmbedPlan",
    "GeneratePlan",
    "GenerateStreamTranslator",
    "LegacyEmbedPlan",
    "MappedOptions",
    "OllamaError",
    "ToolCallAccumulator",
    "build_chat_request",
    "build_embed_request",
    "build_generate_request",
    "build_legacy_embeddings_request",
    "chat_load_response",
    "chat_response_from_openai",
    "convert_messages",
    "done_reason_for",
    "embed_response",
    "error_line",
    "error_object",
    "format_rfc3339_nano",
    "generate_load_response",
    "generate_response_from_llama",
    "json_bytes",
    "l2_normalize",
    "legacy_embeddings_response",
    "map_options",
    "model_not_found",
    "model_required",
    "ndjson_line",
    "new_tool_call_id",
    "normalize_tools",
    "now_rfc3339",
    "parse_format",
    "parse_go_duration",
    "parse_keep_alive",
    "parse_think",
    "require_model",
    "stray_root_options",
    "think_enabled",
    "think_template_kwargs",
    "unsupported_capability",
    "upstream_error",
]
