from __future__ import annotations

from pathlib import Path

import pytest

from router.config import DEFAULT_CONFIG, Price, load_settings, resolve_secret
from router.errors import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.yaml"
    p.write_text(text)
    return p


def test_default_config_runs_on_embedded_models() -> None:
    s = load_settings(DEFAULT_CONFIG)
    assert [t.backend for t in s.tiers] == ["embedded", "embedded"]
    assert s.resolve(s.cascade.policy).is_file()
    assert s.tier("small").model == "smollm2-135m-instruct"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "tiers:\n - name: a\n   backend: embeded\n   model: x\n",
            r"tiers\[0\]\.backend: Input should be 'embedded', 'openai_http' or 'vllm_engine' "
            r"\(got 'embeded'\)",
        ),
        (
            "tiers:\n - name: a\n   backend: embedded\n   model: x\n   n_ctxx: 5\n",
            r"tiers\[0\]\.n_ctxx: not an option of backend embedded \(options: backend, "
            r"flash_attn, model, n_batch, n_ctx, ",
        ),
        ("tiers: []\n", r"tiers: List should have at least 1 item"),
        (
            "tiers:\n - name: a\n   backend: openai_http\n   model: x\n",
            r"tiers\[0\]\.base_url: Field required",
        ),
        (
            "tiers:\n - {name: a, backend: embedded, model: x, base_url: 'http://h/v1'}\n",
            r"tiers\[0\]\.base_url: base_url is an option of backend openai_http; this tier's "
            r"backend is embedded",
        ),
        (
            "tiers:\n - {name: a, backend: openai_http, base_url: u, model: x, n_ctx: 4096}\n",
            r"tiers\[0\]\.n_ctx: n_ctx is an option of backend embedded; this tier's backend is "
            r"openai_http \(got 4096\)",
        ),
        (
            "tiers:\n - {name: a, backend: vllm_engine, model: x, timeout_s: 5}\n",
            r"tiers\[0\]\.timeout_s: timeout_s is an option of backend openai_http",
        ),
        (
            "tiers:\n - {name: a, model: x}\n",
            r"tiers\[0\]\.backend: Field required \(one of 'embedded', 'openai_http', "
            r"'vllm_engine'\)",
        ),
        (
            "server:\n  port: -1\ntiers:\n - {name: a, backend: embedded, model: x}\n",
            r"server\.port: Input should be greater than or equal to 0",
        ),
        (
            "tiers:\n - {name: a, backend: embedded, model: x}\n - {name: a, backend: embedded, "
            "model: y}\n",
            "repeated: a",
        ),
        (
            "tiers:\n - {name: a, backend: openai_http, base_url: u, model: x, top_logprobs: "
            "all}\n",
            r"tiers\[0\]\.top_logprobs: Value error, must be auto or a whole number from 1 to 20 "
            r"\(got 'all'\)",
        ),
        (
            "tiers:\n - {name: a, backend: embedded, model: x, top_logprobs: 0}\n",
            r"tiers\[0\]\.top_logprobs: Value error, must be auto or a whole number",
        ),
        ("tiers: [\n", "not valid YAML"),
        ("- 1\n- 2\n", "expected a mapping at the top level"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(path)
    assert str(path) in info.value.message


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    s = load_settings(_write(tmp_path, "tiers:\n - {name: a, backend: embedded, model: x}\n"))
    assert s.resolve(Path("policies/p.yaml")) == tmp_path.resolve() / "policies/p.yaml"


def test_prices() -> None:
    assert Price(prompt_per_mtok=1.0, completion_per_mtok=2.0).cost(1_000_000, 500_000) == 2.0
    gpu = Price(gpu_hour_usd=3.6, tokens_per_second=1000.0)  # $1e-6 per token of GPU time
    assert gpu.cost(600, 400) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="go together"):
        Price(gpu_hour_usd=1.0)


def test_secrets_come_from_the_named_variable() -> None:
    assert resolve_secret(None, "K", {"K": "s3cret"}) == "s3cret"
    assert resolve_secret("inline", "K", {"K": "env"}) == "inline"
    assert resolve_secret(None, "K", {}) is None


def test_top_logprobs_auto_asks_only_for_what_is_read(tmp_path: Path) -> None:
    s = load_settings(_write(tmp_path, "tiers:\n - {name: a, backend: embedded, model: x}\n"
                                       " - {name: b, backend: embedded, model: y, "
                                       "top_logprobs: 8}\n"))
    auto, fixed = s.tiers
    assert auto.top_logprobs == "auto"
    assert (auto.top_logprobs_for(True), auto.top_logprobs_for(False)) == (5, 0)
    assert (fixed.top_logprobs_for(True), fixed.top_logprobs_for(False)) == (8, 8)
