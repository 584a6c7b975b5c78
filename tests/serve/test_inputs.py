"""Request bodies are checked as strictly as OpenAI checks them, and the parameters the router
does not use itself reach the tiers that take them or are refused by name, never dropped."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fake_vllm import RECEIVED, fake_vllm_app
from serve_helpers import FakeBackend, make_settings
from starlette.testclient import TestClient

from router.config import Settings
from router.serve import create_app
from tests.harness.server_thread import ServerThread

SettingsFactory = Callable[..., Settings]
CHAT = {"model": "cascade", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION = {"model": "cascade", "prompt": "hi"}


@pytest.fixture
def client(settings_factory: SettingsFactory) -> Iterator[TestClient]:
    backends = {"small": FakeBackend("fake-small"), "large": FakeBackend("fake-large")}
    with TestClient(create_app(settings_factory(), backends)) as c:
        yield c


def error_of(resp: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err: dict[str, Any] = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


@pytest.mark.parametrize(("extra", "param", "code"), [
    ({"stream": "yes"}, "stream", "invalid_type"),
    ({"stream": 1}, "stream", "invalid_type"),
    ({"n": 1.0}, "n", "invalid_type"),
    ({"top_logprobs": False}, "top_logprobs", "invalid_type"),
    ({"logprobs": "true"}, "logprobs", "invalid_type"),
    ({"max_tokens": 5.0}, "max_tokens", "invalid_type"),
    ({"max_tokens": "5"}, "max_tokens", "invalid_type"),
    ({"temperature": "0.5"}, "temperature", "invalid_type"),
    ({"temperature": True}, "temperature", "invalid_type"),
    ({"seed": 2**63}, "seed", "invalid_value"),
    ({"seed": -(2**63) - 1}, "seed", "invalid_type"),
    ({"seed": 2**70}, "seed", "invalid_type"),  # past 2^64 JSON parsers give a float
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_value"),
    ({"stream_options": {"include_usage": "yes"}}, "stream_options", "invalid_type"),
    ({"logit_bias": {"hello": 1}}, "logit_bias", "invalid_value"),
    ({"logit_bias": {"42": 500}}, "logit_bias", "invalid_value"),
    ({"response_format": {"type": "yaml"}}, "response_format", "invalid_value"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages", "invalid_type"),
])
def test_wrong_types_are_400(client: TestClient, extra: dict[str, Any], param: str,
                             code: str) -> None:
    err = error_of(client.post("/v1/chat/completions", json={**CHAT, **extra}))
    assert (err["param"], err["code"]) == (param, code), err


@pytest.mark.parametrize(("extra", "param"), [
    ({"echo": True}, "echo"), ({"logprobs": True}, "logprobs"), ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": []}, "prompt")])
def test_wrong_completion_bodies_are_400(client: TestClient, extra: dict[str, Any],
                                         param: str) -> None:
    assert error_of(client.post("/v1/completions", json={**COMPLETION, **extra}))["param"] == param


def test_int64_seeds_and_integral_temperatures_pass(client: TestClient) -> None:
    for extra in ({"seed": 2**63 - 1}, {"seed": -(2**63)}, {"temperature": 1}, {"top_p": 1}):
        assert client.post("/v1/chat/completions", json={**CHAT, **extra}).status_code == 200


@pytest.mark.parametrize(("extra", "param"), [
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"logit_bias": {"42": 5}}, "logit_bias"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
])
def test_parameters_no_tier_takes_are_refused_by_name(client: TestClient, extra: dict[str, Any],
                                                      param: str) -> None:
    err = error_of(client.post("/v1/chat/completions", json={**CHAT, **extra}))
    assert (err["param"], err["code"]) == (param, "unsupported_parameter")
    assert param in err["message"]


def test_defaults_of_forwarded_parameters_are_no_ops(client: TestClient) -> None:
    for extra in ({"logit_bias": {}}, {"presence_penalty": 0}, {"tools": None}):
        assert client.post("/v1/chat/completions", json={**CHAT, **extra}).status_code == 200


def test_405_carries_allow(client: TestClient) -> None:
    r = client.get("/v1/chat/completions")
    err = error_of(r, 405)
    assert r.headers["allow"] == "POST" and err["code"] == "method_not_allowed"
    assert client.post("/healthz").headers["allow"] == "GET"


@pytest.fixture(scope="module")
def upstream() -> Iterator[ServerThread]:
    with ServerThread(fake_vllm_app()) as s:
        yield s


def test_forwarded_parameters_reach_openai_http_tiers(
        tmp_path: Path, upstream: ServerThread,
        serve_thread: Callable[[Any], ServerThread]) -> None:
    url = f"{upstream.url}/v1"
    tiers = [{"name": n, "backend": "openai_http", "base_url": url, "model": m}
             for n, m in (("small", "ok-low"), ("large", "ok"))]
    base = serve_thread(create_app(make_settings(tmp_path, tiers=tiers))).url
    extra = {"logit_bias": {"42": -100}, "response_format": {"type": "json_object"},
             "frequency_penalty": 0.5}
    RECEIVED.clear()
    r = httpx.post(f"{base}/v1/chat/completions", json={**CHAT, **extra}, timeout=20)
    assert r.status_code == 200 and r.headers["x-router-escalated"] == "true"
    assert [b["model"] for b in RECEIVED] == ["ok-low", "ok"]  # both tiers got them
    for sent in RECEIVED:
        assert {k: sent[k] for k in extra} == extra
    RECEIVED.clear()
    schema = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}
    r = httpx.post(f"{base}/v1/completions",
                   json={**COMPLETION, "model": "ok", "response_format": schema}, timeout=20)
    assert r.status_code == 200 and RECEIVED[0]["response_format"] == schema
