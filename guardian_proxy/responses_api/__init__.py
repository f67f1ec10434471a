"""The OpenAI Responses API (`POST /v1/responses`) translated onto chat completions, as pure functions.

Why translate rather than relay, although both pinned llama-servers (upstream and
ik_llama.cpp) serve /v1/responses themselves: what real clients send has to be rewritten
anyway (Codex's `namespace`, `web_search`, `image_generation` tools make llama-server answer
"'type' of tool must be 'function'"), ik's and upstream's versions of the route differ in
what they accept and stream, and Guardian's own chat handling (cache isolation per key,
the optimizer's defaults, the request limits) is built around /v1/chat/completions. One
translation here gives every backend flavor the same, tested Responses API.

No I/O here, as in `guardian_proxy.ollama`: `build_chat_request` validates a Responses body
and plans the chat request; `ResponsesStream` turns chat chunks into Responses events one by
one; `response_from_chat` turns a whole chat completion into a Response object. The HTTP
route is `guardian_proxy.responses_http`.
"""

from guardian_proxy.responses_api.request import ResponsesError, ResponsesPlan, build_chat_request
from guardian_proxy.responses_api.stream import ResponsesStream, response_from_chat, sse_event

__all__ = [
    "ResponsesError",
    "ResponsesPlan",
    "ResponsesStream",
    "build_chat_request",
    "response_from_chat",
    "sse_event",
]
