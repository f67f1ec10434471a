"""Ollama images (bare base64, no `data:` prefix) → OpenAI `image_url` content parts."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from guardian_proxy.ollama.errors import OllamaError

# Magic bytes of the formats llama-server's image loader (stb_image) knows, plus WebP.
_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"WEBP", 8, "image/webp"),  # RIFF....WEBP
    (b"BM", 0, "image/bmp"),
)


def image_mime(b64: str) -> str:
    """The MIME type from the first bytes of base64 data; JPEG when unknown (as Ollama's bridge)."""
    head = b64[:16]  # 16 characters decode to the 12 bytes every signature above fits in
    try:
        raw = base64.b64decode(head + "=" * (-len(head) % 4))
    except (binascii.Error, ValueError):
        return "image/jpeg"
    for magic, offset, mime in _SIGNATURES:
        if raw[offset : offset + len(magic)] == magic:
            if mime == "image/webp" and raw[:4] != b"RIFF":
                continue
            return mime
    return "image/jpeg"


def image_data_uri(image: object) -> str:
    """A data: URI for one Ollama image; a value that already is a data: URI passes through.

    The whole payload is not decoded here (it can be megabytes per token of latency);
    llama-server rejects undecodable images itself.
    """
    if not isinstance(image, str):
        raise OllamaError(400, "invalid image: expected a base64-encoded string")
    if image.startswith("data:"):
        return image
    return f"data:{image_mime(image)};base64,{image}"


def image_part(image: object) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": image_data_uri(image)}}


def image_base64(image: object) -> str:
    """The bare base64 of an image (for /completion's `multimodal_data`)."""
    if not isinstance(image, str):
        raise OllamaError(400, "invalid image: expected a base64-encoded string")
    if image.startswith("data:"):
        _, _, data = image.partition(",")
        return data
    return image
