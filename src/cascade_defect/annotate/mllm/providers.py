"""Which endpoint the MLLM annotator talks to: Azure OpenAI, OpenAI or a compatible server.

Credentials come only from the environment (keys, or Entra ID on Azure), so a notebook's
parameters or a manifest can never hold one; :func:`make_client` turns that environment into an
SDK client with the SDK's own retries off, because the annotator does its own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import openai
from openai import OpenAI

ProviderChoice = Literal["auto", "openai", "azure", "compatible"]


Provider = Literal["openai", "azure", "compatible"]


DEFAULT_AZURE_API_VERSION = "2024-10-21"


AZURE_SCOPE = "https://cognitiveservices.azure.com/.default"


DEFAULT_MODEL = "gpt-4o"


PLACEHOLDER_API_KEY = "not-needed"  # local OpenAI-compatible servers accept any key


class ProviderNotConfigured(RuntimeError):
    """No provider can be used with this environment; the caller falls back to offline."""


def detect_provider(environ: Mapping[str, str] | None = None) -> Literal["azure", "openai"] | None:
    """Provider the ``auto`` choice means in this environment, or None for offline.

    Azure wins when ``AZURE_OPENAI_ENDPOINT`` is set (its key may come from Entra ID,
    so no key variable is required); otherwise OpenAI when ``OPENAI_API_KEY`` or
    ``OPENAI_BASE_URL`` is set.
    """
    env = os.environ if environ is None else environ
    if env.get("AZURE_OPENAI_ENDPOINT"):
        return "azure"
    if env.get("OPENAI_API_KEY") or env.get("OPENAI_BASE_URL"):
        return "openai"
    return None


@dataclass(frozen=True)
class ClientConfig:
    """Where requests go and under which names they are recorded (never a secret)."""

    provider: Provider
    model: str  # model name, or the Azure deployment name
    base_url: str
    api_version: str | None = None
    auth: str = "api_key"  # "api_key" | "entra_id" | "none"


def make_client(
    provider: ProviderChoice = "auto",
    model: str | None = None,
    *,
    base_url: str | None = None,
    api_version: str | None = None,
    timeout_s: float = 60.0,
    environ: Mapping[str, str] | None = None,
) -> tuple[OpenAI, ClientConfig]:
    """Build an SDK client from the environment; ``model`` is the deployment on Azure.

    ``base_url`` is allowed as a parameter because it is not a secret (a local vLLM or
    Ollama server); keys are read from the environment only.
    """
    env = os.environ if environ is None else environ
    chosen: str | None = provider
    if provider == "auto":
        chosen = detect_provider(env)
        if chosen is None:
            raise ProviderNotConfigured(
                "no AZURE_OPENAI_ENDPOINT, OPENAI_API_KEY or OPENAI_BASE_URL in the environment"
            )
    if chosen == "azure":
        return _make_azure_client(model, api_version, timeout_s, env)
    if chosen in ("openai", "compatible"):
        url = base_url or env.get("OPENAI_BASE_URL") or None
        key = env.get("OPENAI_API_KEY")
        if chosen == "compatible" and not url:
            raise ProviderNotConfigured("provider 'compatible' needs base_url or OPENAI_BASE_URL")
        if not key and not url:
            raise ProviderNotConfigured("OPENAI_API_KEY is not set")
        client = OpenAI(
            api_key=key or PLACEHOLDER_API_KEY,
            base_url=url,
            max_retries=0,
            timeout=timeout_s,
        )
        config = ClientConfig(
            provider="compatible" if chosen == "compatible" or (url and not key) else "openai",
            model=model or DEFAULT_MODEL,
            base_url=str(client.base_url),
            auth="api_key" if key else "none",
        )
        return client, config
    raise ValueError(f"unknown provider {provider!r}; use auto, openai, azure or compatible")


def _make_azure_client(
    deployment: str | None, api_version: str | None, timeout_s: float, env: Mapping[str, str]
) -> tuple[OpenAI, ClientConfig]:
    endpoint = env.get("AZURE_OPENAI_ENDPOINT")
    if not endpoint:
        raise ProviderNotConfigured("AZURE_OPENAI_ENDPOINT is not set")
    deployment = deployment or env.get("AZURE_OPENAI_DEPLOYMENT")
    if not deployment:
        raise ProviderNotConfigured(
            "no Azure deployment: pass model= or set AZURE_OPENAI_DEPLOYMENT"
        )
    version = api_version or env.get("OPENAI_API_VERSION") or DEFAULT_AZURE_API_VERSION
    key = env.get("AZURE_OPENAI_API_KEY")
    common: dict[str, Any] = {
        "azure_endpoint": endpoint,
        "api_version": version,
        "max_retries": 0,
        "timeout": timeout_s,
    }
    # No azure_deployment on the client: the SDK routes chat calls to
    # /openai/deployments/{model}/..., while files and batches stay at /openai/....
    if key:
        client = openai.AzureOpenAI(api_key=key, **common)
        auth = "api_key"
    else:
        from azure.identity import DefaultAzureCredential, get_bearer_token_provider

        token_provider = get_bearer_token_provider(DefaultAzureCredential(), AZURE_SCOPE)
        client = openai.AzureOpenAI(azure_ad_token_provider=token_provider, **common)
        auth = "entra_id"
    config = ClientConfig(
        provider="azure",
        model=deployment,
        base_url=str(client.base_url),
        api_version=version,
        auth=auth,
    )
    return client, config
