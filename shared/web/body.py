"""Reading a request's body within limits: size, field count and JSON depth, for forms and JSON alike."""

from __future__ import annotations

import json
from typing import Final
from urllib.parse import parse_qsl

import azure.functions as func

from shared.web.responses import HttpError

MAX_BODY_BYTES: Final = 16 * 1024


MAX_FORM_FIELDS: Final = 40


# Our bodies are flat objects; json.loads recurses once per level and a few thousand `[` under the
# size limit would raise RecursionError.
MAX_JSON_DEPTH: Final = 32


def wants_json(req: func.HttpRequest) -> bool:
    accept = req.headers.get("accept", "")
    return ("application/json" in accept and "text/html" not in accept) or is_json_body(req)


def is_json_body(req: func.HttpRequest) -> bool:
    return req.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"


def body(req: func.HttpRequest) -> bytes:
    declared = req.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise HttpError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes")
    data = req.get_body() or b""
    if len(data) > MAX_BODY_BYTES:
        raise HttpError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes")
    return data


def _nested_deeper_than(data: bytes, limit: int) -> bool:
    """Whether JSON text opens more than `limit` arrays or objects at once (brackets in strings skipped)."""
    if data.count(b"[") + data.count(b"{") <= limit:  # the usual case costs two C scans
        return False
    depth, in_string, escaped = 0, False, False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return False


def read_input(req: func.HttpRequest) -> dict[str, str]:
    """A JSON object or an urlencoded form, as field → string. 400 for anything else."""
    data = body(req)
    content_type = req.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        if _nested_deeper_than(data, MAX_JSON_DEPTH):
            raise HttpError(400, f"the body nests deeper than {MAX_JSON_DEPTH} levels", {"body": "nested too deeply"})
        try:
            parsed = json.loads(data or b"null")
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise HttpError(400, "the body is not valid JSON", {"body": "not valid JSON"}) from None
        if not isinstance(parsed, dict):
            raise HttpError(400, "the body must be a JSON object", {"body": "must be a JSON object"})
        fields: dict[str, str] = {}
        for key, value in parsed.items():
            if isinstance(value, bool) or not isinstance(value, str | int):
                raise HttpError(400, f"{key} must be a string or a number", {str(key): "must be a string or a number"})
            fields[str(key)] = str(value)
        return fields
    if content_type == "application/x-www-form-urlencoded":
        try:
            pairs = parse_qsl(
                data.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(data), max_num_fields=MAX_FORM_FIELDS
            )
        except (ValueError, UnicodeDecodeError):
            raise HttpError(400, "the form body is malformed", {"body": "malformed form data"}) from None
        return dict(pairs)
    raise HttpError(415, "send application/json or application/x-www-form-urlencoded")
