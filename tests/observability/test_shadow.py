"""router/serve/shadow.py: similarity, the answer's logprob under the top tier, and the sampler's
bounded background work (FakeBackend upstreams, no network)."""

from __future__ import annotations

import asyncio
import math
import random

import numpy as np
import pytest
from prometheus_client import REGISTRY
from serve_helpers import FakeBackend

from router.backends.base import ChatMessage, GenerationRequest
from router.config import EmbeddedTier
from router.errors import UpstreamError
from router.scoring import TokenLogprobs
from router.serve.shadow import ShadowSampler, suffix_mean_logprob, text_similarity

TOP = EmbeddedTier(name="large", backend="embedded", model="fake-large",
                  price={"prompt_per_mtok": 10.0, "completion_per_mtok": 20.0})  # type: ignore[arg-type]
REQUEST = GenerationRequest(messages=(ChatMessage("user", "Hi?"),), max_tokens=8)


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_text_similarity() -> None:
    assert text_similarity("The answer is 42.", "the  ANSWER is 42") == 1.0
    assert text_similarity("yes", "no") == 0.0
    assert text_similarity("", "") == 1.0
    assert 0.0 < text_similarity("Paris is the capital", "The capital is Paris") < 1.0


def test_suffix_mean_logprob() -> None:
    lp = TokenLogprobs(np.array([-9.0, -1.0, -3.0]), np.array([5, 3, 2]))
    assert suffix_mean_logprob(lp, 5) == -2.0
    assert suffix_mean_logprob(lp, 4) == -3.0          # the 3-byte token straddles the boundary
    assert suffix_mean_logprob(lp, 10) == pytest.approx(-13 / 3)
    assert math.isnan(suffix_mean_logprob(lp, 1))
    assert math.isnan(suffix_mean_logprob(lp, 0))


async def test_sampler_records_agreement() -> None:
    top = FakeBackend("fake-large", tokens=["Hello", " there", "!"], score_logprob=-0.5)
    sampler = ShadowSampler(top, TOP, fraction=1.0, rng=random.Random(0))
    scored = value("router_shadow_samples_total", tier="t-agree", outcome="scored")
    agreed = value("router_shadow_agreements_total", tier="t-agree")
    assert sampler.maybe_sample(tier="t-agree", request=REQUEST, prompt_text="Hi?",
                                answer="Hello there!")
    await asyncio.wait_for(_drain(sampler), 5)
    assert value("router_shadow_samples_total", tier="t-agree", outcome="scored") == scored + 1
    assert value("router_shadow_agreements_total", tier="t-agree") == agreed + 1
    assert value("router_shadow_similarity_ratio_bucket", tier="t-agree", le="1.0") >= 1


async def test_sampler_disagreement_failure_and_drop() -> None:
    top = FakeBackend("fake-large", tokens=["No", "."], score_logprob=-6.0, delay_s=0.2)
    sampler = ShadowSampler(top, TOP, fraction=1.0, max_concurrency=1)
    agreed = value("router_shadow_agreements_total", tier="t-dis")
    dropped = value("router_shadow_samples_total", tier="t-dis", outcome="dropped")
    assert sampler.maybe_sample(tier="t-dis", request=REQUEST, prompt_text="Hi?",
                                answer="Yes, certainly")
    assert not sampler.maybe_sample(tier="t-dis", request=REQUEST, prompt_text="Hi?",
                                    answer="Yes")  # at the limit: dropped, not queued
    await asyncio.wait_for(_drain(sampler), 5)
    assert value("router_shadow_samples_total", tier="t-dis", outcome="dropped") == dropped + 1
    assert value("router_shadow_agreements_total", tier="t-dis") == agreed

    broken = FakeBackend("fake-large", error=UpstreamError("down"))
    sampler = ShadowSampler(broken, TOP, fraction=1.0)
    failed = value("router_shadow_samples_total", tier="t-dis", outcome="failed")
    sampler.maybe_sample(tier="t-dis", request=REQUEST, prompt_text="Hi?", answer="Yes")
    await asyncio.wait_for(_drain(sampler), 5)
    assert value("router_shadow_samples_total", tier="t-dis", outcome="failed") == failed + 1


async def test_fraction_zero_samples_nothing_and_close_cancels() -> None:
    top = FakeBackend("fake-large", delay_s=10)
    assert not ShadowSampler(top, TOP, fraction=0.0).maybe_sample(
        tier="t", request=REQUEST, prompt_text="", answer="x")
    sampler = ShadowSampler(top, TOP, fraction=1.0)
    assert sampler.maybe_sample(tier="t", request=REQUEST, prompt_text="", answer="x")
    await sampler.aclose()
    await asyncio.sleep(0)
    assert sampler.in_flight == 0
    with pytest.raises(ValueError):
        ShadowSampler(top, TOP, fraction=1.5)


async def _drain(sampler: ShadowSampler) -> None:
    while sampler.in_flight:
        await asyncio.sleep(0.01)
