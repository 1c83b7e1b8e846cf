"""What the gateway checks about a frame before it is enqueued, and how.

Nothing here decodes an image: the body is read up to a byte limit (from
``Content-Length`` before reading, and while reading when there is none), the
base64 text is decoded, and the frame is judged from its header
(:func:`framepool.codec.probe`), so a decompression bomb is refused from its
first bytes. The status codes:

- 400 ``invalid_json`` / ``invalid_base64`` / ``bad_frame`` (a JPEG or PNG whose
  header is broken) / ``empty_frame``; 422 ``invalid_request`` (fields);
- 413 ``body_too_large`` / ``frame_too_large`` (over ``MAX_FRAME_BYTES``) and
  ``too_many_pixels`` (over ``MAX_FRAME_PIXELS``: a decompression bomb);
- 415 ``unsupported_media_type``: the bytes are neither JPEG nor PNG.
"""

from __future__ import annotations

import base64
import binascii
import re
import sys

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from framepool import codec
from framepool.errors import BadFrame
from framepool.settings import Settings
from producer.gateway_errors import ApiError

_JPEG_SOI = b"\xff\xd8\xff"
#: Room in a JSON body for everything but the frame's base64 text.
JSON_SLACK_BYTES = 64 * 1024
_DATA_URL = re.compile(r"^data:[\w.+/-]*;base64,")


class InferenceRequest(BaseModel):
    """``POST /inference``: the reference document's JSON, plus framepool's frame fields.

    Unknown fields are ignored, as the reference runtime did.
    """

    model_config = ConfigDict(extra="ignore")

    model_id: str = Field(min_length=1, max_length=128)
    frame_base64: str = Field(description="JPEG or PNG bytes, base64 (a data: URL prefix is ok)")
    camera_id: str | None = Field(None, max_length=256)
    seq: int | None = Field(None, ge=0)
    captured_at: float | None = Field(None, description="epoch seconds the frame was taken")
    deadline_ms: float | None = Field(None, gt=0, description="drop if not started by then")
    correlation_id: str | None = Field(None, description="X-Request-ID takes precedence")
    request_id: str | None = Field(None, description="the reference's name for correlation_id")
    callback_url: str | None = None
    latest_wins: bool | None = Field(
        None, description="drop this frame if a newer one of its camera is queued"
    )


def json_body_limit(max_frame_bytes: int) -> int:
    """The largest ``/inference`` body: a maximal frame in base64 plus the other fields."""
    return 4 * -(-max_frame_bytes // 3) + JSON_SLACK_BYTES


async def read_body(request: Request, limit: int, what: str) -> bytes:
    """The request body, refused with 413 once it is known to pass ``limit`` bytes."""
    error = "frame_too_large" if what == "frame" else "body_too_large"
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise ApiError(400, "bad_request", f"invalid Content-Length {length!r}") from None
        if declared > limit:
            raise ApiError(
                413, error, f"{what} is {declared} bytes, over the {limit}-byte limit", limit=limit
            )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(
                413, error, f"{what} is over the {limit}-byte limit (read {size})", limit=limit
            )
        chunks.append(chunk)
    return b"".join(chunks)


def parse_inference(body: bytes) -> InferenceRequest:
    if not body:
        raise ApiError(400, "invalid_json", "the body must be a JSON object with model_id, ...")
    try:
        return InferenceRequest.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        if any(e["type"] == "json_invalid" for e in errors):
            raise ApiError(
                400, "invalid_json", f"body is not valid JSON: {errors[0]['msg']}"
            ) from None
        raise RequestValidationError(errors) from None


def decode_base64(text: str, max_bytes: int) -> bytes:
    """Decode ``frame_base64`` (standard alphabet, padding, whitespace and a data: prefix ok)."""
    if text.startswith("data:"):
        text = _DATA_URL.sub("", text, count=1)
    if len(text) // 4 * 3 > max_bytes + 3:
        raise ApiError(
            413,
            "frame_too_large",
            f"frame is about {len(text) // 4 * 3} bytes, over the {max_bytes}-byte limit",
            limit=max_bytes,
        )
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        pass
    try:  # MIME-style line breaks are common; anything else is not base64
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, "invalid_base64", f"frame_base64 is not valid base64: {exc}") from None


def check_frame(data: bytes, settings: Settings) -> codec.FrameInfo:
    """Judge a frame from its header only: 400, 413 or 415 as the module docstring says."""
    if not data:
        raise ApiError(400, "empty_frame", "the frame is empty")
    limit = settings.max_frame_bytes
    if len(data) > limit:
        raise ApiError(
            413,
            "frame_too_large",
            f"frame is {len(data)} bytes, over the {limit}-byte limit",
            limit=limit,
        )
    if not (data.startswith(_JPEG_SOI) or data.startswith(codec.PNG_SIGNATURE)):
        raise ApiError(
            415, "unsupported_media_type", "the frame is not a JPEG or PNG image (unknown header)"
        )
    try:  # the pixel limit is checked below, to answer 413 rather than 400
        info = codec.probe(data, max_bytes=limit, max_pixels=sys.maxsize)
    except BadFrame as exc:
        raise ApiError(400, "bad_frame", str(exc)) from None
    pixels = info.width * info.height
    if pixels > settings.max_frame_pixels:
        raise ApiError(
            413,
            "too_many_pixels",
            f"image header says {info.width}x{info.height} = {pixels} pixels, over the "
            f"{settings.max_frame_pixels}-pixel limit (refused before decoding)",
            limit=settings.max_frame_pixels,
        )
    return info
