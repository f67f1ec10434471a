"""/api/generate request → the llama-server request that serves it best.

Four shapes, chosen by `build_generate_request`:

* **chat** (the usual case: templated model, not raw, no `suffix`, no `context`):
  POST /v1/chat/completions with `[system?, user(prompt, images)]`. llama-server applies the
  model's own chat template, splits reasoning into `thinking`, handles images and `format`
  exactly as for /api/chat — which is what Ollama's template rendering amounts to.
* **raw** (`raw: true`, or a model without a chat template): POST /completion with the prompt
  as is. Images go as `multimodal_data` with media markers (an Ollama `[img-N]` tag in the
  prompt is replaced by the marker; images not referenced get a marker in front).
* **infill** (`suffix` given, not raw): POST /infill with `input_prefix`/`input_suffix`:
  llama-server builds the fill-in-the-middle prompt from the model's FIM tokens, which is
  what Ollama's `.Suffix` templates do. In raw mode Ollama ignores `suffix`, and so do we.
* **render** (deprecated `context` given, templated, no images): the chat template must be
  rendered first (POST /apply-template `render_body`), then POST /completion with
  `completion_body(rendered)`: the prompt is `[*context, rendered]` — llama-server accepts a
  mixed list of token ids and strings — so the old conversation is continued token-exact.

`context` in the answer (token ids of prompt + output) is produced for chat, render and
templateless-raw shapes when the caller does the extra tokenize step (see
`GeneratePlan.wants_context`); not in raw mode (Ollama omits it there), not for infill, and
not with images (the image tokens cannot be expressed as ids).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from guardian_proxy.ollama.durations import parse_keep_alive
from guardian_proxy.ollama.errors import OllamaError, require_model, type_error
from guardian_proxy.ollama.fields import (
    chat_response_format,
    get_bool,
    get_str,
    logprob_params,
    native_format_params,
    parse_format,
    parse_logprobs,
    parse_stream,
    parse_think,
    think_params,
    think_template_kwargs,
)
from guardian_proxy.ollama.images import image_base64, image_part
from guardian_proxy.ollama.options import map_options, stray_root_options
from guardian_proxy.ollama.stream import GenerateStreamTranslator, Upstream

Mode = Literal["chat", "raw", "infill", "render"]
Action = Literal["generate", "load", "unload"]

DEFAULT_MEDIA_MARKER = "<__media__>"
_IMG_TAG = re.compile(r"\[img-(\d+)\]")


@dataclass
class GeneratePlan:
    model: str
    action: Action
    """"generate": send the request; "load"/"unload": answer with `responses.generate_load_response`."""
    stream: bool
    keep_alive: float | None
    """Seconds, `KEEP_FOREVER` (-1.0), or None when the client did not say."""
    mode: Mode = "chat"
    endpoint: str = "/v1/chat/completions"
    body: dict[str, Any] = field(default_factory=dict)
    """The llama-server request (for mode "render": use `completion_body(rendered)` instead)."""
    upstream: Upstream = "chat"
    """Dialect of the answer: "chat" (OpenAI) or "native" (/completion, /infill)."""
    render_body: dict[str, Any] | None = None
    """POST /apply-template body: required first in mode "render"; in mode "chat" it gives
    the prompt text for `context`."""
    prompt_text: str | None = None
    """The prompt as text when known without rendering (templateless raw), for `context`."""
    context: list[int] = field(default_factory=list)
    """The client's `context`, prefixed to the answer's `context`."""
    wants_context: bool = False
    """Whether the final object should carry `context`: the caller gets the prompt text
    (`prompt_text`, or /apply-template with `render_body`), POSTs /tokenize with
    `tokenize_body(prompt_text, translator.text)` and passes `context_from_tokens(tokens)`
    to `finish()`/`result()`. Skipping it only drops the deprecated field."""
    load_options: dict[str, Any] = field(default_factory=dict)
    ignored_options: dict[str, Any] = field(default_factory=dict)
    stray_options: dict[str, Any] = field(default_factory=dict)
    ignored_fields: list[str] = field(default_factory=list)
    """Request fields that had no effect (e.g. a Go `template`), for a debug log."""
    think: bool | str | None = None
    has_images: bool = False
    has_suffix: bool = False
    """`suffix` given (not raw): the caller checks the insert capability."""
    top_logprobs: int = 0

    def completion_body(self, rendered: str) -> dict[str, Any]:
        """Mode "render": the /completion body once /apply-template returned `rendered`."""
        body = dict(self.body)
        body["prompt"] = [*self.context, rendered] if self.context else rendered
        self.prompt_text = rendered
        return body

    def tokenize_body(self, prompt_text: str, output: str) -> dict[str, Any]:
        """POST /tokenize body giving the token ids of prompt + output (Ollama tokenizes the same).

        BOS is added unless a client `context` (which already starts with it) comes first.
        """
        return {"content": prompt_text + output, "add_special": not self.context, "parse_special": True}

    def context_from_tokens(self, tokens: list[int]) -> list[int]:
        return [*self.context, *tokens]

    def translator(self, *, emit: bool = True) -> GenerateStreamTranslator:
        return GenerateStreamTranslator(
            self.model, upstream=self.upstream, emit=emit, include_top_logprobs=self.top_logprobs > 0
        )


def _parse_context(value: object) -> list[int]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise type_error("GenerateRequest", "context", value, "[]int")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int):
            raise type_error("GenerateRequest", "context", item, "int")
    return list(value)


def _parse_images(value: object) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise type_error("GenerateRequest", "images", value, "[]api.ImageData")
    return [img for img in value if img != ""]


def _multimodal_prompt(prompt: str, images: list[Any], marker: str) -> dict[str, Any]:
    """/completion prompt object: Ollama `[img-N]` tags become the marker; others go in front."""
    used: set[int] = set()

    def swap(m: re.Match[str]) -> str:
        n = int(m.group(1))
        if n < len(images) and n not in used:
            used.add(n)
            return marker
        return m.group(0)

    text = _IMG_TAG.sub(swap, prompt)
    # Images are consumed in marker order, so reorder them to match the text.
    order = [int(m.group(1)) for m in _IMG_TAG.finditer(prompt) if int(m.group(1)) in used]
    order = list(dict.fromkeys(order))
    rest = [i for i in range(len(images)) if i not in used]
    text = marker * len(rest) + text
    data = [image_base64(images[i]) for i in rest + order]
    return {"prompt_string": text, "multimodal_data": data}


def build_generate_request(
    body: Mapping[str, Any],
    *,
    has_template: bool = True,
    defaults: Mapping[str, Any] | None = None,
    n_ctx: int | None = None,
    default_system: str | None = None,
    stream_upstream: bool | None = None,
    media_marker: str = DEFAULT_MEDIA_MARKER,
) -> GeneratePlan:
    """Validate an /api/generate body and plan the llama-server request.

    `has_template`: the model has a chat template (GET /props `chat_template`); without one
    the prompt is sent as is, like Ollama's default `{{ .Prompt }}` template.
    `default_system`: the model's system prompt, used when the request has none (not raw).
    `media_marker`: llama-server's multimodal marker (set LLAMA_MEDIA_MARKER on launch so it
    is stable; newer builds randomise it otherwise). Other arguments as `build_chat_request`.
    """
    if not isinstance(body, Mapping):
        raise OllamaError(400, "request body must be a JSON object")
    struct = "GenerateRequest"
    model = require_model(body, "generate")
    stream = parse_stream(body, struct)
    keep_alive = parse_keep_alive(body.get("keep_alive"))
    prompt = get_str(body, "prompt", struct)
    stray = stray_root_options(body)
    if prompt == "" and keep_alive == 0:  # Ollama unloads before looking at anything else
        return GeneratePlan(
            model=model, action="unload", stream=stream, keep_alive=keep_alive, stray_options=stray
        )

    raw = get_bool(body, "raw", struct, False)
    system = get_str(body, "system", struct)
    template = get_str(body, "template", struct)
    suffix = get_str(body, "suffix", struct)
    context = _parse_context(body.get("context"))
    if raw and (template or system or context):
        raise OllamaError(400, "raw mode does not support template, system, or context")
    images = _parse_images(body.get("images"))
    logprobs, top_logprobs = parse_logprobs(body, struct)
    think = parse_think(body.get("think"))
    fmt = parse_format(body.get("format"))
    mapped = map_options(body.get("options"), defaults=defaults, n_ctx=n_ctx)

    plan = GeneratePlan(
        model=model,
        action="generate" if prompt else "load",
        stream=stream,
        keep_alive=keep_alive,
        load_options=mapped.load,
        ignored_options=mapped.ignored,
        stray_options=stray,
        think=think,
        has_images=bool(images),
        has_suffix=bool(suffix) and not raw,
        top_logprobs=top_logprobs if logprobs else 0,
    )
    if not prompt:
        return plan
    if template and not raw:
        plan.ignored_fields.append("template")  # a Go template cannot be run; the model's own applies

    up_stream = stream if stream_upstream is None else stream_upstream
    common: dict[str, Any] = {"stream": up_stream, "cache_prompt": True, **mapped.params}

    if plan.has_suffix:
        _plan_infill(plan, prompt, suffix, common, fmt, logprobs, top_logprobs)
        for name, present in (
            ("system", system),
            ("context", context),
            ("images", images),
            ("think", think is not None),
        ):
            if present:
                plan.ignored_fields.append(name)
    elif raw or not has_template:
        _plan_raw(
            plan,
            prompt,
            images,
            context,
            common,
            fmt,
            logprobs,
            top_logprobs,
            media_marker,
            templated=not raw,
        )
        if system and not raw:
            plan.ignored_fields.append("system")
        if think is not None:
            plan.ignored_fields.append("think")
    else:
        system = system or default_system or ""  # the model's system prompt unless the request has one
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        if images:
            parts: list[dict[str, Any]] = [{"type": "text", "text": prompt}]
            parts.extend(image_part(img) for img in images)
            messages.append({"role": "user", "content": parts})
        else:
            messages.append({"role": "user", "content": prompt})
        kwargs = think_template_kwargs(think)
        render: dict[str, Any] = {"messages": messages}
        if kwargs is not None:
            render["chat_template_kwargs"] = kwargs
        if context and not images:
            _plan_render(plan, render, context, common, fmt, logprobs, top_logprobs)
        else:
            if context:
                plan.ignored_fields.append("context")  # token ids cannot be mixed into an image prompt
            _plan_chat(plan, model, messages, render, common, up_stream, fmt, kwargs, logprobs, top_logprobs)
    return plan


def _plan_chat(
    plan: GeneratePlan,
    model: str,
    messages: list[dict[str, Any]],
    render: dict[str, Any],
    common: dict[str, Any],
    up_stream: bool,
    fmt: str | dict[str, Any] | None,
    kwargs: dict[str, Any] | None,
    logprobs: bool,
    top_logprobs: int,
) -> None:
    body: dict[str, Any] = {"model": model, "messages": messages, **common}
    if up_stream:
        body["stream_options"] = {"include_usage": True}
    response_format = chat_response_format(fmt)
    if response_format is not None:
        body["response_format"] = response_format
    if kwargs is not None:
        body["chat_template_kwargs"] = kwargs
    body.update(think_params(plan.think))
    body.update(logprob_params(logprobs, top_logprobs, native=False))
    plan.mode, plan.endpoint, plan.upstream, plan.body = "chat", "/v1/chat/completions", "chat", body
    plan.render_body = render
    plan.wants_context = not plan.has_images


def _plan_render(
    plan: GeneratePlan,
    render: dict[str, Any],
    context: list[int],
    common: dict[str, Any],
    fmt: str | dict[str, Any] | None,
    logprobs: bool,
    top_logprobs: int,
) -> None:
    body = {**common, **native_format_params(fmt), **logprob_params(logprobs, top_logprobs, native=True)}
    plan.mode, plan.endpoint, plan.upstream, plan.body = "render", "/completion", "native", body
    plan.render_body = render
    plan.context = context
    plan.wants_context = True


def _plan_raw(
    plan: GeneratePlan,
    prompt: str,
    images: list[Any],
    context: list[int],
    common: dict[str, Any],
    fmt: str | dict[str, Any] | None,
    logprobs: bool,
    top_logprobs: int,
    marker: str,
    *,
    templated: bool,
) -> None:
    """raw mode, or a model without a chat template (`templated`: not raw, so context applies)."""
    prompt_value: Any
    if images:
        prompt_value = _multimodal_prompt(prompt, images, marker)
        if context:
            plan.ignored_fields.append("context")
        context = []
    elif context:
        prompt_value = [*context, prompt]
    else:
        prompt_value = prompt
    body = {
        "prompt": prompt_value,
        **common,
        **native_format_params(fmt),
        **logprob_params(logprobs, top_logprobs, native=True),
    }
    plan.mode, plan.endpoint, plan.upstream, plan.body = "raw", "/completion", "native", body
    plan.context = context
    plan.prompt_text = prompt
    plan.wants_context = templated and not images


def _plan_infill(
    plan: GeneratePlan,
    prompt: str,
    suffix: str,
    common: dict[str, Any],
    fmt: str | dict[str, Any] | None,
    logprobs: bool,
    top_logprobs: int,
) -> None:
    body = {
        "input_prefix": prompt,
        "input_suffix": suffix,
        **common,
        **native_format_params(fmt),
        **logprob_params(logprobs, top_logprobs, native=True),
    }
    plan.mode, plan.endpoint, plan.upstream, plan.body = "infill", "/infill", "native", body
