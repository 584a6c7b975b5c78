"""The router in front of a fake vLLM server (real HTTP on loopback, vLLM's exact shapes).

Failures of a lower tier end in an escalation; failures of the tier that answers end in a
clean OpenAI error body (or an SSE error event once streaming has started): never a hang."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import fake_vllm
import openai
import pytest
from fake_vllm import TOKENS, fake_vllm_app
from serve_helpers import make_settings, write_policy

from router.serve import create_app
from tests.harness.server_thread import ServerThread, free_port

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def upstream() -> Iterator[ServerThread]:
    with ServerThread(fake_vllm_app()) as s:
        yield s


def tier(name: str, model: str, url: str) -> dict[str, Any]:
    return {"name": name, "backend": "openai_http", "base_url": url, "model": model,
            "timeout_s": 1.0, "connect_timeout_s": 1.0, "max_retries": 1}


@pytest.fixture
def router_for(tmp_path: Any, upstream: ServerThread,
               serve_thread: Callable[[Any], ServerThread]) -> Callable[..., openai.OpenAI]:
    def build(small: str, large: str = "ok", small_url: str | None = None,
              **kw: Any) -> openai.OpenAI:
        url = f"{upstream.url}/v1"
        settings = make_settings(tmp_path, escalate_below=-1.0, tiers=[
            tier("small", small, small_url or url), tier("large", large, url)], **kw)
        server = serve_thread(create_app(settings))
        return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0,
                             timeout=20)
    return build


def chat(client: openai.OpenAI, model: str = "cascade", **kw: Any) -> Any:
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=8, **kw)


def test_vllm_shapes_accept_and_escalate(router_for: Callable[..., openai.OpenAI]) -> None:
    client = router_for("ok")
    raw = chat(client, logprobs=True, top_logprobs=3)
    reply = raw.parse()
    assert raw.headers["x-router-tier"] == "small" and reply.model == "ok"
    assert reply.choices[0].message.content == "".join(TOKENS)
    assert [c.token for c in reply.choices[0].logprobs.content] == TOKENS
    assert len(reply.choices[0].logprobs.content[0].top_logprobs) == 3
    comp = client.completions.create(model="cascade", prompt="hi", max_tokens=8, logprobs=2)
    assert comp.choices[0].text == "".join(TOKENS) and comp.choices[0].logprobs is not None

    client = router_for("ok-low")
    raw = chat(client)
    assert raw.headers["x-router-escalated"] == "true" and raw.parse().model == "ok"
    assert raw.headers["x-router-reason"] == "low_confidence"


@pytest.mark.parametrize(("small", "reason"), [
    ("error500", "upstream_error"),
    ("slow", "timeout"),
    ("badjson", "upstream_error"),
    ("cutstream", None),  # non-streaming requests of cutstream succeed
])
def test_lower_tier_failure_escalates(router_for: Callable[..., openai.OpenAI], small: str,
                                      reason: str | None) -> None:
    raw = chat(router_for(small))
    if reason is None:
        assert raw.headers["x-router-tier"] == "small"
    else:
        assert raw.headers["x-router-tier"] == "large"
        assert raw.headers["x-router-reason"] == reason
        assert raw.parse().choices[0].message.content == "".join(TOKENS)


def test_connection_refused_escalates(router_for: Callable[..., openai.OpenAI]) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    raw = chat(router_for("ok", small_url=dead))
    assert raw.headers["x-router-reason"] == "upstream_error"
    assert raw.headers["x-router-tier"] == "large"


@pytest.mark.parametrize(("model", "status"), [
    ("error500", 502), ("slow", 504), ("badjson", 502)])
def test_answering_tier_failure_is_a_clean_error(router_for: Callable[..., openai.OpenAI],
                                                 model: str, status: int) -> None:
    client = router_for("ok", large=model)
    with pytest.raises(openai.APIStatusError) as info:
        chat(client, model=model)
    assert info.value.status_code == status
    body = info.value.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}


def test_connection_refused_on_last_tier_is_503(tmp_path: Any,
                                                serve_thread: Callable[[Any], ServerThread]
                                                ) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    settings = make_settings(tmp_path, tiers=[tier("small", "ok", dead),
                                              tier("large", "ok", dead)],
                             cascade={"degraded_fallback": False})
    server = serve_thread(create_app(settings))
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        chat(client)
    assert info.value.status_code == 503


def test_streams(router_for: Callable[..., openai.OpenAI]) -> None:
    client = router_for("cutstream")  # the small tier's stream breaks: escalate before commit
    stream = client.chat.completions.create(
        model="cascade", messages=[{"role": "user", "content": "hi"}], max_tokens=8,
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(
        TOKENS)
    assert {c.model for c in chunks} == {"ok"}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(TOKENS)

    comp = client.completions.create(model="cascade", prompt="hi", max_tokens=8, stream=True)
    assert "".join(c.choices[0].text for c in comp) == "".join(TOKENS)


def test_stream_cut_on_answering_tier_ends_cleanly(
        router_for: Callable[..., openai.OpenAI]) -> None:
    client = router_for("ok", large="cutstream")
    stream = client.chat.completions.create(
        model="cutstream", messages=[{"role": "user", "content": "hi"}], max_tokens=8,
        stream=True)
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass


def test_readyz_checks_upstreams(router_for: Callable[..., openai.OpenAI]) -> None:
    import httpx

    client = router_for("ok", small_url=f"http://127.0.0.1:{free_port()}/v1")
    base = str(client.base_url).removesuffix("/v1/")
    r = httpx.get(f"{base}/readyz", timeout=20)
    assert r.status_code == 503 and r.json()["tiers"]["large"] == "ok"


def _asked(body: dict[str, Any]) -> int:
    """The top-k a request to the upstream asked for (chat top_logprobs, completions logprobs)."""
    return int(body["top_logprobs"] if "messages" in body else body["logprobs"])


@pytest.mark.parametrize(("signal", "tier_k", "client_k", "asked"), [
    ("mean_logprob", None, None, 0),  # chosen-token signals read no alternatives: none asked
    ("logprob_per_byte", None, 3, 3),  # the client's alternatives are asked for
    ("neg_mean_entropy", None, None, 5),  # `auto` asks 5 for a signal that reads them
    ("mean_margin", None, 2, 5),
    ("mean_logprob", 2, None, 2),  # a fixed number is asked whatever the signal
])
@pytest.mark.parametrize("stream", [False, True])
def test_the_upstream_is_asked_for_the_alternatives_someone_reads(
        tmp_path: Any, upstream: ServerThread, serve_thread: Callable[[Any], ServerThread],
        signal: str, tier_k: int | None, client_k: int | None, asked: int,
        stream: bool) -> None:
    url = f"{upstream.url}/v1"
    tiers = [{**tier(n, m, url), **({"top_logprobs": tier_k} if tier_k else {})}
             for n, m in (("small", "ok-low"), ("large", "ok"))]
    policy = write_policy(tmp_path, "p", {"kind": "threshold", "escalate_below": 100.0},
                          signal=signal)
    settings = make_settings(tmp_path, tiers=tiers, cascade={"policy": str(policy)})
    client = openai.OpenAI(base_url=f"{serve_thread(create_app(settings)).url}/v1",
                           api_key="none", max_retries=0, timeout=20)
    fake_vllm.RECEIVED.clear()
    kw: dict[str, Any] = {"logprobs": True, "top_logprobs": client_k} if client_k else {}
    raw = chat(client, stream=stream, **kw)
    assert raw.headers["x-router-escalated"] == "true"  # both tiers are asked
    assert raw.headers["x-router-confidence"] != "nan"  # the top tier's answer was scored
    assert [_asked(b) for b in fake_vllm.RECEIVED] == [asked, asked]
    if not stream and client_k:
        content = raw.parse().choices[0].logprobs.content
        assert {len(c.top_logprobs) for c in content} == {client_k}
    fake_vllm.RECEIVED.clear()
    comp = client.completions.create(model="cascade", prompt="hi", max_tokens=8,
                                     logprobs=client_k, stream=stream)
    assert comp is not None
    assert [_asked(b) for b in fake_vllm.RECEIVED] == [asked, asked]


def test_each_tier_asks_for_what_its_own_policy_reads(
        tmp_path: Any, upstream: ServerThread,
        serve_thread: Callable[[Any], ServerThread]) -> None:
    url = f"{upstream.url}/v1"
    entropy = write_policy(tmp_path, "entropy", {"kind": "threshold", "escalate_below": 100.0},
                           signal="neg_mean_entropy")
    tiers = [{**tier("small", "ok-low", url), "policy": str(entropy)}, tier("large", "ok", url)]
    settings = make_settings(tmp_path, tiers=tiers)  # the cascade's policy: mean_logprob
    client = openai.OpenAI(base_url=f"{serve_thread(create_app(settings)).url}/v1",
                           api_key="none", max_retries=0, timeout=20)
    fake_vllm.RECEIVED.clear()
    raw = chat(client)
    assert raw.headers["x-router-tier"] == "large"
    assert [(b["model"], b["top_logprobs"]) for b in fake_vllm.RECEIVED] == [("ok-low", 5),
                                                                            ("ok", 0)]
