"""config.yaml -> validated, typed settings. Every error names the file, the key and what was
expected, and is raised at start-up, never in the middle of a request.

    server:   host, port, the cascade's virtual model name, protection limits, decision log
    tiers:    ordered list, cheapest first: name, backend (embedded | openai_http | vllm_engine),
              model, prompt template, price, and the options of that backend only (a key of
              another backend is an error that names it)
    cascade:  the policy file, prompt gate, hard-escalation switches
    select:   defaults of `router select` (model tier, windows, batching)

Relative paths (policy files, GGUF files, logs) are relative to the config file's folder.
Only `cli.py` reads the environment; `api_key_env`/`api_keys_env` name variables it resolves.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from router.errors import ConfigError
from router.prompting import DEFAULT_GENERATION, DEFAULT_ROLES, DEFAULT_STOP
from router.weights import Weights

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config.yaml"
#: the top-k a tier with `top_logprobs: auto` asks for when its confidence reads alternatives
AUTO_TOP_LOGPROBS = 5
MAX_TOP_LOGPROBS = 20  # what OpenAI and vLLM take


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Price(_Strict):
    """USD per million tokens, or, for self-hosted GPUs, an hourly price and a throughput.

    A self-hosted tier costs gpu_hour_usd / 3600 / tokens_per_second per token: the GPU time a
    token occupies. This is what LiteLLM reports as $0.
    """

    prompt_per_mtok: float = Field(0.0, ge=0)
    completion_per_mtok: float = Field(0.0, ge=0)
    gpu_hour_usd: float | None = Field(None, ge=0)
    tokens_per_second: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _gpu_pair(self) -> Price:
        if (self.gpu_hour_usd is None) != (self.tokens_per_second is None):
            raise ValueError("gpu_hour_usd and tokens_per_second go together")
        return self

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        if self.gpu_hour_usd is not None and self.tokens_per_second is not None:
            per_token = self.gpu_hour_usd / 3600.0 / self.tokens_per_second
            return per_token * (prompt_tokens + completion_tokens)
        return (
            prompt_tokens * self.prompt_per_mtok + completion_tokens * self.completion_per_mtok
        ) / 1e6


class PromptTemplateConfig(_Strict):
    roles: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_ROLES))
    generation: str = DEFAULT_GENERATION
    stop: list[str] = Field(default_factory=lambda: list(DEFAULT_STOP))
    prefix: str = ""


class _TierBase(_Strict):
    """The keys of every tier, whatever its backend."""

    name: str = Field(min_length=1)
    model: str = Field(min_length=1)
    prompt_template: PromptTemplateConfig | None = None
    price: Price = Field(default_factory=Price)
    policy: Path | None = None  # overrides cascade.policy for the decision after this tier
    # the top-k alternatives asked for with every token (more if a client asks for more);
    # `auto`: AUTO_TOP_LOGPROBS when the tier's confidence reads them (entropy, margin...),
    # else none, only the chosen tokens' logprobs (less for the upstream to compute and send)
    top_logprobs: int | Literal["auto"] = "auto"

    @field_validator("top_logprobs", mode="plain")
    @classmethod
    def _top_logprobs(cls, value: Any) -> int | Literal["auto"]:
        if value == "auto" or (type(value) is int and 1 <= value <= MAX_TOP_LOGPROBS):
            return "auto" if value == "auto" else int(value)
        raise ValueError(f"must be auto or a whole number from 1 to {MAX_TOP_LOGPROBS}")

    def top_logprobs_for(self, reads_alternatives: bool) -> int:
        """The k this tier asks for when its confidence does (not) read the alternatives.

        Example: `auto` -> 5 or 0; `top_logprobs: 8` -> 8 either way.
        """
        if self.top_logprobs == "auto":
            return AUTO_TOP_LOGPROBS if reads_alternatives else 0
        return self.top_logprobs


class EmbeddedTier(_TierBase):
    """llama.cpp in this process; `model` is a packaged id or a GGUF path."""

    backend: Literal["embedded"]
    n_ctx: int = Field(2048, ge=64)
    n_batch: int = Field(512, ge=8)
    n_threads: int | None = Field(None, ge=1)
    score_window: int | None = Field(None, ge=8)
    score_stride: int | None = Field(None, ge=1)
    # the tensors llama.cpp computes with: "file" as shipped (fastest to generate with), or
    # widened to "f16"/"f32" (router.weights: a GEMM for scoring many tokens at once)
    weights: Weights = "file"
    # llama.cpp's flash-attention kernel: about 15% more tokens/s on packed scoring batches on
    # this CPU, and scores that differ from the default kernel's by its rounding only
    flash_attn: bool = False


class OpenAIHttpTier(_TierBase):
    """An OpenAI-compatible server (vLLM, llama.cpp server, a hosted API); `model` is the
    upstream's model name."""

    backend: Literal["openai_http"]
    base_url: str = Field(min_length=1)
    api_key: str | None = None
    api_key_env: str | None = None
    timeout_s: float = Field(60.0, gt=0)
    connect_timeout_s: float = Field(5.0, gt=0)
    max_concurrency: int = Field(64, ge=1)
    max_retries: int = Field(2, ge=0)
    # vLLM's stream_options.continuous_usage_stats: usage on every streamed chunk, so a stream
    # the cascade aborts early is still costed (other servers may reject the option)
    stream_usage_every_chunk: bool = False


class VllmEngineTier(_TierBase):
    """vLLM's engine in this process; `model` is a Hugging Face model dir or id."""

    backend: Literal["vllm_engine"]
    # keyword arguments of vllm.LLM over DEFAULT_ENGINE_ARGS (chunked prefill, bounded
    # max_num_batched_tokens against prompt_logprobs' memory peak)
    engine_args: dict[str, Any] = Field(default_factory=dict)
    score_window: int | None = Field(None, ge=8)  # default: max_model_len - 1
    score_stride: int | None = Field(None, ge=1)  # default: half the window


#: one tier's config: the keys of its backend only (`backend` picks the class)
TierConfig = Annotated[EmbeddedTier | OpenAIHttpTier | VllmEngineTier,
                       Field(discriminator="backend")]
TIER_CLASSES: dict[str, type[_TierBase]] = {
    "embedded": EmbeddedTier, "openai_http": OpenAIHttpTier, "vllm_engine": VllmEngineTier}


class DecisionLogConfig(_Strict):
    path: Path
    include_prompt: bool = False


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    cascade_model: str = "cascade"
    api_keys: list[str] = Field(default_factory=list)
    api_keys_env: str | None = None
    max_body_bytes: int = Field(1 << 20, ge=1024)
    # the whole request body must arrive within this time (else 408); a request holds an
    # admission slot only once its body is in
    body_timeout_s: float = Field(15.0, gt=0)
    # bytes read from one upstream answer (body or stream; ~1.3 KB per token at top-20
    # logprobs); past that the answer is an upstream error
    max_upstream_response_bytes: int = Field(8 << 20, ge=4096)
    # /metrics and the per-tier details of /readyz need an API key too (/healthz stays open)
    ops_require_key: bool = False
    max_tokens_limit: int = Field(1024, ge=1)
    default_max_tokens: int = Field(256, ge=1)
    default_temperature: float = Field(1.0, ge=0.0, le=2.0)  # when a request names none
    max_in_flight: int = Field(64, ge=1)
    max_queue: int = Field(128, ge=0)
    request_timeout_s: float = Field(120.0, gt=0)
    shutdown_grace_s: float = Field(30.0, ge=0)
    decision_log: DecisionLogConfig | None = None
    # worker processes on one socket; `auto`: one per CPU this process may run on
    workers: Annotated[int, Field(ge=1)] | Literal["auto"] = 1


class PromptGateConfig(_Strict):
    policy: Path


class ShadowConfig(_Strict):
    """Quality sampling: a fraction of accepted answers also goes to the top tier, off the
    request path, and the agreement of the two answers becomes metrics."""

    fraction: float = Field(0.02, ge=0.0, le=1.0)
    max_concurrency: int = Field(2, ge=1)
    min_similarity: float = Field(0.5, ge=0.0, le=1.0)
    min_logprob: float = -2.0


class ProbesConfig(_Strict):
    """How the confidence probes (router.probes) ask a tier, when its policy's signal uses
    them: k sampled answers for `consistency`, the top-k read for `verify_p_yes`."""

    consistency_samples: int = Field(4, ge=1, le=16)
    consistency_temperature: float = Field(0.7, gt=0.0, le=2.0)
    consistency_top_p: float = Field(0.95, gt=0.0, le=1.0)
    verify_top_k: int = Field(20, ge=2, le=20)


class CascadeConfig(_Strict):
    policy: Path = Path("policies/support-cascade.yaml")
    probes: ProbesConfig = ProbesConfig()
    prompt_gate: PromptGateConfig | None = None
    shadow: ShadowConfig | None = None
    escalate_on_length: bool = False
    escalate_on_empty: bool = True
    degraded_fallback: bool = True
    # streaming: tier k's first tokens are held back while its running confidence is checked;
    # the buffer is judged (and, accepted, flushed) after `stream_buffer_tokens`, at the answer's
    # end, or once `stream_buffer_seconds` have passed since its first token (with at least
    # `stream_min_tokens` in), whichever comes first: a slow tier holds the first byte that
    # long at most. A policy that judges the whole answer (probes, answer text) waits for it.
    stream_buffer_tokens: int = Field(32, ge=1)
    stream_buffer_seconds: float = Field(1.0, gt=0)
    stream_min_tokens: int = Field(4, ge=1)  # no early escalation on fewer tokens


class SelectConfig(_Strict):
    model: str | None = None  # a tier name; default: the first tier
    batch_size: int = Field(32, ge=1)
    window: int | None = Field(None, ge=8)
    stride: int | None = Field(None, ge=1)
    # scores are saved every this many records or seconds, whichever comes first: a killed
    # run loses at most that much work (--checkpoint-records / --checkpoint-seconds)
    checkpoint_records: int = Field(256, ge=1)
    checkpoint_seconds: float = Field(30.0, gt=0)
    # the weights an embedded scoring tier computes with in `select` (router.weights): "f16"
    # scores about twice as fast as the packaged Q4_1 file; "tier": the tier's own `weights`
    weights: Literal["tier", "file", "f16", "f32"] = "f16"
    # the embedded scoring tier's flash attention (null: the tier's own `flash_attn`)
    flash_attn: bool | None = True


class Settings(_Strict):
    server: ServerConfig = Field(default_factory=ServerConfig)
    tiers: list[TierConfig] = Field(min_length=1)
    cascade: CascadeConfig = Field(default_factory=CascadeConfig)
    select: SelectConfig = Field(default_factory=SelectConfig)
    source: Path | None = None  # the file it came from

    @field_validator("tiers")
    @classmethod
    def _unique(cls, tiers: list[TierConfig]) -> list[TierConfig]:
        names = [t.name for t in tiers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"tier names must be unique; repeated: {', '.join(dupes)}")
        return tiers

    @model_validator(mode="after")
    def _refs(self) -> Settings:
        names = {t.name for t in self.tiers}
        if self.select.model is not None and self.select.model not in names:
            raise ValueError(
                f"select.model {self.select.model!r} is not a tier ({', '.join(sorted(names))})"
            )
        if self.server.cascade_model in names:
            raise ValueError(
                f"server.cascade_model {self.server.cascade_model!r} "
                "must differ from every tier name"
            )
        return self

    def tier(self, name: str) -> TierConfig:
        for t in self.tiers:
            if t.name == name or t.model == name:
                return t
        raise ConfigError(
            f"no tier named {name!r} (tiers: {', '.join(t.name for t in self.tiers)})"
        )

    @property
    def base_dir(self) -> Path:
        return self.source.parent if self.source else Path.cwd()

    def resolve(self, path: Path) -> Path:
        """A path from the config, relative to the config file's folder."""
        p = path.expanduser()
        return p if p.is_absolute() else self.base_dir / p


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _tier_error(err: Any) -> tuple[tuple[int | str, ...], str]:
    """A tier's validation error in the config's terms: the backend tag pydantic puts in the
    location is dropped, a key of another backend says whose key it is, a bad `backend` lists
    the backends. Other errors pass through as (location, message)."""
    loc, msg = tuple(err["loc"]), str(err["msg"])
    if len(loc) < 2 or loc[0] != "tiers" or not isinstance(loc[1], int):
        return loc, msg
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        names = [f"'{b}'" for b in TIER_CLASSES]
        return (*loc[:2], "backend"), (f"Input should be {', '.join(names[:-1])} or {names[-1]}"
                                       if err["type"] == "union_tag_invalid"
                                       else f"Field required (one of {', '.join(names)})")
    if len(loc) >= 3 and loc[2] in TIER_CLASSES:
        backend, loc = str(loc[2]), (*loc[:2], *loc[3:])
        key = loc[2] if len(loc) == 3 else None
        if err["type"] == "extra_forbidden" and isinstance(key, str):
            owners = [b for b, cls in TIER_CLASSES.items() if key in cls.model_fields]
            keys = ", ".join(sorted(TIER_CLASSES[backend].model_fields))
            msg = (f"{key} is an option of backend {' or '.join(owners)}; this tier's backend "
                   f"is {backend}" if owners else
                   f"not an option of backend {backend} (options: {keys})")
    return loc, msg


def settings_from_dict(raw: Any, source: str = "<config>") -> Settings:
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: expected a mapping at the top level, got {type(raw).__name__}"
        )
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            got = err.get("input")
            if err["type"] == "union_tag_invalid" and isinstance(got, dict):
                got = got.get("backend")
            got_s = (
                f" (got {got!r})" if not isinstance(got, dict | list) and got is not None else ""
            )
            loc, msg = _tier_error(err)
            lines.append(f"{source}: {_format_loc(loc)}: {msg}{got_s}")
        raise ConfigError("\n".join(lines)) from None
    return settings


def load_settings(path: Path | str | None = None) -> Settings:
    """Read and validate a config file (default: the repo's config.yaml)."""
    p = Path(path) if path is not None else DEFAULT_CONFIG
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {p} cannot be read: {exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    settings = settings_from_dict(raw, str(p))
    return settings.model_copy(update={"source": p.resolve()})


def resolve_secret(
    value: str | None, env_name: str | None, environ: dict[str, str] | None = None
) -> str | None:
    """An inline secret, else the named environment variable (the CLI passes os.environ)."""
    if value:
        return value
    if env_name:
        env = environ if environ is not None else dict(os.environ)
        return env.get(env_name) or None
    return None


def resolve_api_keys(settings: Settings, environ: Mapping[str, str] | None) -> tuple[str, ...]:
    """Keys from `server.api_keys` plus the comma-separated variable `server.api_keys_env`;
    none with `server.ops_require_key` is a ConfigError."""
    keys = [k for k in settings.server.api_keys if k]
    env_name = settings.server.api_keys_env
    if env_name and environ is not None:
        keys += [k.strip() for k in environ.get(env_name, "").split(",") if k.strip()]
    if settings.server.ops_require_key and not keys:
        raise ConfigError("server.ops_require_key needs API keys (server.api_keys or "
                          "server.api_keys_env)")
    return tuple(keys)
