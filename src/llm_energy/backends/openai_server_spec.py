"""The openai-server backend's declaration: any OpenAI-compatible server reached over HTTP
(see registry.py). Its code: `openai_server.py`."""

from __future__ import annotations

from pydantic import Field

from llm_energy.backends.registry import PIPELINE_ENVIRONMENT, BackendSpec
from llm_energy.backends.settings import BackendSettings


class OpenAIServerConfig(BackendSettings):
    """Any OpenAI-compatible server, reached over HTTP by the load generator. Energy is what
    this host's meters see: measure on the machine that runs the server."""

    base_url: str = Field(pattern=r"^https?://", description="e.g. http://127.0.0.1:8000/v1")
    served_model: str | None = Field(
        None, min_length=1, description="the `model` field of requests; default: the model's name")
    api_key_env: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="NAME of the environment variable holding the API key (never the key)")
    server_extensions: bool = Field(
        True, description="send vLLM's min_tokens/ignore_eos/return_token_ids request fields "
                         "and ask for per-chunk usage (continuous_usage_stats)")


SPEC = BackendSpec(
    name="openai-server",
    config=OpenAIServerConfig,
    implementation="llm_energy.backends.openai_server:OpenAIServerBackend",
    server=True,
    # No batch setting of its own: the load generator's concurrency limits it.
    batch_setting=None,
    packages=("httpx", "aiohttp"),
    import_name="httpx",
    **PIPELINE_ENVIRONMENT,
    install_hint="needs only httpx, part of the pipeline's own environment (`make venv`)",
    # Frozen (study.identity): the settings release 1 hashed.
    release_1_settings=("base_url", "served_model", "api_key_env", "server_extensions"),
)
