"""Options for the aiohttp transport under every Azure SDK client the app builds."""

from __future__ import annotations

from urllib.request import getproxies


def transport_options() -> dict[str, bool]:
    """Keyword arguments for an Azure SDK client (or AsyncPipelineClient) that sit on aiohttp.

    With `use_env_settings` on, aiohttp also looks for ~/.netrc credentials on every request, in a
    worker thread: about a third of the worker's CPU per submission, measured. It is needed only to
    honour HTTP(S)_PROXY / NO_PROXY, so it is on exactly when a proxy is configured.
    """
    proxied = any(scheme != "no" for scheme in getproxies())  # NO_PROXY alone names no proxy
    return {"use_env_settings": proxied}
