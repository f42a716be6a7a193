"""Who is calling, from the headers App Service Authentication (Easy Auth) injects.

The platform strips client-sent `X-MS-CLIENT-PRINCIPAL*` headers and sets its own, but only when
Authentication is on. So the headers are trusted only when WEBSITE_AUTH_ENABLED says so; otherwise
every caller is anonymous and protected endpoints answer 401 (secure by default).
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Mapping
from typing import Final

from shared.model.principal import Principal
from shared.settings import easy_auth_enabled

PRINCIPAL_HEADER: Final = "x-ms-client-principal"
OBJECT_ID_CLAIMS: Final = ("http://schemas.microsoft.com/identity/claims/objectidentifier", "oid")
UPN_CLAIMS: Final = ("preferred_username", "upn", "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn")
NAME_CLAIMS: Final = ("name",)
MAX_HEADER: Final = 16_384


def principal_from_headers(headers: Mapping[str, str], env: Mapping[str, str] | None = None) -> Principal | None:
    """The signed-in user, or None. Never raises on a malformed header: it is simply not trusted."""
    if not easy_auth_enabled(env):
        return None
    raw = _header(headers, PRINCIPAL_HEADER)
    if not raw or len(raw) > MAX_HEADER:
        return None
    try:
        data = json.loads(base64.b64decode(raw, validate=False))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    claims: dict[str, str] = {}
    for claim in data.get("claims") or [] if isinstance(data, dict) else []:
        if isinstance(claim, dict) and isinstance(claim.get("typ"), str) and isinstance(claim.get("val"), str):
            claims.setdefault(claim["typ"], claim["val"])
    object_id = next((claims[c] for c in OBJECT_ID_CLAIMS if c in claims), "")
    try:
        object_id = str(uuid.UUID(object_id))
    except ValueError:
        return None
    upn = next((claims[c] for c in UPN_CLAIMS if c in claims), "").lower()
    name = next((claims[c] for c in NAME_CLAIMS if c in claims), upn)
    return Principal(object_id=object_id, upn=upn, name=name)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None
