"""End to end: the official `openai` client against a running `router serve` on the embedded
SmolLM2 -> Qwen2.5-Coder-1.5B cascade. Accept and escalation are forced with thresholds: one server
accepts everything (escalate_below -100), one escalates everything (escalate_below +1)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from serve_helpers import REPO, write_policy

from router.backends import Backend, build_backends
from router.config import settings_from_dict
from router.serve import create_app
from tests.harness.server_thread import ServerThread

pytestmark = [pytest.mark.model, pytest.mark.timeout(300)]
SMALL, LARGE = "smollm2-135m-instruct", "qwen2.5-coder-1.5b-instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def settings_with(tmp: Path, escalate_below: float) -> Any:
    raw = yaml.safe_load((REPO / "config.yaml").read_text())
    for t in raw["tiers"]:
        t.update(n_ctx=512, n_threads=2)
    policy = write_policy(tmp, f"p{escalate_below}", {"kind": "threshold",
                                                      "escalate_below": escalate_below},
                          {"name": "quantile_logprob", "q": 0.1})
    raw["cascade"]["policy"] = str(policy)
    return settings_from_dict(raw).model_copy(update={"source": REPO / "config.yaml"})


@pytest.fixture(scope="module")
def clients(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, openai.OpenAI]]:
    tmp = tmp_path_factory.mktemp("e2e")
    accept, escalate = settings_with(tmp, -100.0), settings_with(tmp, 1.0)
    backends: dict[str, Backend] = build_backends(accept)  # shared: models load once
    with ServerThread(create_app(accept, backends)) as a, \
            ServerThread(create_app(escalate, backends, preload=False)) as e:
        yield {name: openai.OpenAI(base_url=f"{s.url}/v1", api_key="none", max_retries=0,
                                   timeout=120)
               for name, s in (("accept", a), ("escalate", e))}


def test_chat_accepted(clients: dict[str, openai.OpenAI]) -> None:
    raw = clients["accept"].chat.completions.with_raw_response.create(
        model="cascade", messages=QUESTION, max_tokens=16, temperature=0)
    reply = raw.parse()
    assert raw.headers["x-router-tier"] == "small"
    assert raw.headers["x-router-escalated"] == "false"
    assert float(raw.headers["x-router-confidence"]) <= 0
    assert raw.headers["x-router-signal"] == "quantile_logprob_q0.1"
    assert reply.model == SMALL and reply.choices[0].message.content
    assert reply.choices[0].logprobs is None


def test_chat_escalated(clients: dict[str, openai.OpenAI]) -> None:
    raw = clients["escalate"].chat.completions.with_raw_response.create(
        model="cascade", messages=QUESTION, max_tokens=16, temperature=0)
    reply = raw.parse()
    assert raw.headers["x-router-tier"] == "large"
    assert raw.headers["x-router-escalated"] == "true"
    assert raw.headers["x-router-reason"] == "low_confidence"
    assert reply.model == LARGE and "Paris" in (reply.choices[0].message.content or "")


def test_completions_with_logprobs(clients: dict[str, openai.OpenAI]) -> None:
    reply = clients["accept"].completions.create(
        model="cascade", prompt="The capital of France is", max_tokens=8, temperature=0,
        logprobs=2)
    choice = reply.choices[0]
    assert reply.model == SMALL and choice.text and choice.logprobs is not None
    assert choice.logprobs.token_logprobs and choice.logprobs.top_logprobs


def test_streams(clients: dict[str, openai.OpenAI]) -> None:
    accepted = clients["accept"].chat.completions.create(
        model="cascade", messages=QUESTION, max_tokens=16, temperature=0, stream=True)
    chunks = list(accepted)
    assert {c.model for c in chunks} == {SMALL}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    esc = clients["escalate"]
    direct = esc.chat.completions.create(model=LARGE, messages=QUESTION, max_tokens=16,
                                         temperature=0).choices[0].message.content
    with esc.chat.completions.with_streaming_response.create(
            model="cascade", messages=QUESTION, max_tokens=16, temperature=0,
            stream=True) as resp:
        assert resp.headers["x-router-tier"] == "large"
        assert resp.headers["x-router-escalated"] == "true"
        chunks = list(resp.parse())
    assert {c.model for c in chunks} == {LARGE}
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == direct  # only the large tier's text, none of the small tier's


def test_the_shipped_preset_escalates_the_readme_sum(tmp_path: Path) -> None:
    """The README's tour on the repo's own config.yaml and its preset: SmolLM2 gets the sum
    wrong, the learned rule escalates it, Qwen answers 42; the password question stays small."""
    raw = yaml.safe_load((REPO / "config.yaml").read_text())
    for t in raw["tiers"]:
        t.update(n_ctx=512, n_threads=2)
    settings = settings_from_dict(raw).model_copy(update={"source": REPO / "config.yaml"})
    with ServerThread(create_app(settings, build_backends(settings))) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0,
                               timeout=240)
        raw_sum = client.chat.completions.with_raw_response.create(
            model="cascade", max_tokens=64,
            messages=[{"role": "user", "content": "What is 17 + 25?"}])
        assert raw_sum.headers["x-router-signal"] == "learned"
        assert raw_sum.headers["x-router-tier"] == "large"
        assert raw_sum.headers["x-router-reason"] == "low_confidence"
        assert "42" in (raw_sum.parse().choices[0].message.content or "")
        raw_pw = client.chat.completions.with_raw_response.create(
            model="cascade", max_tokens=64,
            messages=[{"role": "user", "content": "How do I reset my password?"}])
        assert raw_pw.headers["x-router-tier"] == "small"
