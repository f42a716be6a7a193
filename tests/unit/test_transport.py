"""The aiohttp transport honours proxy variables only when a proxy is set (no per-request netrc lookups otherwise)."""

from __future__ import annotations

import pytest

from shared.microsoft.transport import transport_options

PROXY_VARIABLES = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
)


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_no_proxy_configured_turns_env_settings_off(no_proxy_env: pytest.MonkeyPatch) -> None:
    assert transport_options() == {"use_env_settings": False}


def test_no_proxy_list_alone_names_no_proxy(no_proxy_env: pytest.MonkeyPatch) -> None:
    no_proxy_env.setenv("NO_PROXY", "127.0.0.1,localhost")
    assert transport_options() == {"use_env_settings": False}


@pytest.mark.parametrize("name", ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY"])
def test_a_configured_proxy_is_honoured(no_proxy_env: pytest.MonkeyPatch, name: str) -> None:
    no_proxy_env.setenv(name, "http://proxy.corp.example:3128")
    assert transport_options() == {"use_env_settings": True}
