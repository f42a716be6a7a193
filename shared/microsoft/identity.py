"""The app's credential, and who it acts as.

Azure: a managed identity. Elsewhere: the standard AZURE_* variables (an app registration with a
certificate for a real tenant). The async credential is used because it reaches a configured
authority directly, without the public instance discovery the sync MSAL stack performs.
"""

from __future__ import annotations

from typing import Any

import jwt
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import ClientAuthenticationError
from azure.identity.aio import DefaultAzureCredential

from shared.errors import GuardError, first_line
from shared.model.actor import Actor


class IdentityError(GuardError):
    """No token could be had for the app's identity."""


def build_credential() -> AsyncTokenCredential:
    # Developer-tool credentials are excluded: the Azure CLI token is not known to work for Exchange.
    return DefaultAzureCredential(
        exclude_cli_credential=True,
        exclude_powershell_credential=True,
        exclude_developer_cli_credential=True,
        exclude_visual_studio_code_credential=True,
        exclude_shared_token_cache_credential=True,
    )


async def actor_for(credential: AsyncTokenCredential, scope: str) -> Actor:
    """The caller's object id and app id, read from its own access token (for the audit trail).

    The signature is not checked: the token comes straight from our credential, and the claims are
    used for attribution only, never for authorisation.
    """
    try:
        token = await credential.get_token(scope)
    except ClientAuthenticationError as err:
        raise IdentityError(f"could not get a token for {scope}: {first_line(err)}") from None
    try:
        claims: dict[str, Any] = jwt.decode(token.token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return Actor(object_id="", app_id="")
    return Actor(object_id=str(claims.get("oid", "")), app_id=str(claims.get("appid") or claims.get("azp") or ""))
