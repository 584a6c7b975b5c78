"""Cascade decisions with fake backends (no model, no network)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from serve_helpers import FakeBackend

from router.backends.base import ChatMessage, GenerationRequest, StreamDelta
from router.config import Settings
from router.errors import UnknownModelError, UpstreamError, UpstreamTimeout
from router.serve.cascade import Cascade, Outcome

REQ = GenerationRequest(messages=(ChatMessage("user", "hi"),), max_tokens=16)
SettingsFactory = Callable[..., Settings]


def make(settings: Settings, small: FakeBackend | None = None,
         large: FakeBackend | None = None) -> tuple[Cascade, FakeBackend, FakeBackend]:
    s = small or FakeBackend("fake-small")
    big = large or FakeBackend("fake-large", tokens=["Big", " answer"])
    return Cascade(settings, {"small": s, "large": big}), s, big


async def test_confident_answer_is_accepted(settings_factory: SettingsFactory) -> None:
    cascade, _, large = make(settings_factory(escalate_below=-1.0))
    result = await cascade.run(REQ)
    out = result.outcome
    assert result.generation.text == "Hello there!" and out.tier.name == "small"
    assert not out.escalated and out.confidence == pytest.approx(-0.1)
    assert large.calls == 0
    assert out.headers()["x-router-escalated"] == "false"
    assert out.attempts[0].outcome == "accepted" and out.attempts[0].cost_usd > 0


async def test_unsure_answer_escalates(settings_factory: SettingsFactory) -> None:
    cascade, _, _ = make(settings_factory(escalate_below=-1.0),
                         small=FakeBackend("fake-small", logprob=-3.0))
    result = await cascade.run(REQ)
    out = result.outcome
    assert result.generation.text == "Big answer" and out.tier.name == "large"
    assert out.escalated and out.reason == "low_confidence"
    assert out.confidence == pytest.approx(-3.0)
    assert [a.outcome for a in out.attempts] == ["escalated", "answered"]
    h = out.headers()
    assert h["x-router-tier"] == "large" and h["x-router-reason"] == "low_confidence"
    assert h["x-router-signal"] == "mean_logprob"
    assert out.counterfactual_cost_usd == pytest.approx((5 * 10 + 2 * 20) / 1e6)


@pytest.mark.parametrize(("small", "cascade_cfg", "reason"), [
    (FakeBackend("fake-small", tokens=[" ", "\n"]), {}, "empty"),
    (FakeBackend("fake-small", finish="length"), {"escalate_on_length": True}, "truncated"),
    (FakeBackend("fake-small", error=UpstreamError("boom")), {}, "upstream_error"),
    (FakeBackend("fake-small", error=UpstreamTimeout("slow")), {}, "timeout"),
])
async def test_hard_escalations(settings_factory: SettingsFactory, small: FakeBackend,
                                cascade_cfg: dict[str, Any], reason: str) -> None:
    cascade, _, _ = make(settings_factory(escalate_below=-100.0, cascade=cascade_cfg), small)
    result = await cascade.run(REQ)
    assert result.outcome.tier.name == "large" and result.outcome.reason == reason


async def test_last_tier_failure_degrades_or_raises(settings_factory: SettingsFactory) -> None:
    small = FakeBackend("fake-small", logprob=-3.0)
    large = FakeBackend("fake-large", error=UpstreamError("down"))
    cascade, _, _ = make(settings_factory(escalate_below=-1.0), small, large)
    result = await cascade.run(REQ)
    assert result.outcome.degraded and result.outcome.tier.name == "small"
    assert result.outcome.headers()["x-router-degraded"] == "true"

    cascade, _, _ = make(settings_factory(escalate_below=-1.0,
                                          cascade={"degraded_fallback": False}), small, large)
    with pytest.raises(UpstreamError):
        await cascade.run(REQ)


async def test_direct_tier_and_unknown_model(settings_factory: SettingsFactory) -> None:
    cascade, _, large = make(settings_factory(escalate_below=0.5))
    assert cascade.route("cascade") is None
    tier = cascade.route("fake-small")
    assert tier is not None and cascade.route("small") is tier
    result = await cascade.run(REQ, direct=tier)
    assert result.outcome.tier.name == "small" and not result.outcome.escalated
    assert large.calls == 0
    with pytest.raises(UnknownModelError):
        cascade.route("gpt-4")


async def test_prompt_gate_skips_small_tier(settings_factory: SettingsFactory,
                                            tmp_path: Any) -> None:
    from serve_helpers import write_policy

    gate = write_policy(tmp_path, "gate", {"kind": "threshold", "escalate_below": -2.0})
    settings = settings_factory(escalate_below=-100.0,
                                cascade={"prompt_gate": {"policy": str(gate)}})
    cascade, small, _ = make(settings, small=FakeBackend("fake-small", score_logprob=-5.0))
    result = await cascade.run(REQ, prompt_text="gibberish")
    assert result.outcome.reason == "prompt_gate" and small.calls == 0
    small.score_logprob = -0.5
    result = await cascade.run(REQ, prompt_text="how do I reset my password?")
    assert result.outcome.tier.name == "small"


async def collect(cascade: Cascade, **kw: Any) -> tuple[Outcome, str, int]:
    outcome: Outcome | None = None
    text, n = "", 0
    async for ev in cascade.stream(REQ, **kw):
        if isinstance(ev, Outcome):
            outcome = ev
            n += 1
        else:
            assert isinstance(ev, StreamDelta)
            text += ev.text
    assert outcome is not None
    return outcome, text, n


async def test_stream_accepts_and_flushes(settings_factory: SettingsFactory) -> None:
    small = FakeBackend("fake-small", tokens=[f" t{i}" for i in range(50)])
    cascade, _, large = make(settings_factory(
        escalate_below=-1.0, cascade={"stream_buffer_tokens": 8}), small)
    outcome, text, n = await collect(cascade)
    assert n == 1 and outcome.tier.name == "small" and not outcome.escalated
    assert text == "".join(f" t{i}" for i in range(50))
    assert large.calls == 0 and small.closed_early == 0


async def test_stream_escalates_early_and_hides_rejected_text(
        settings_factory: SettingsFactory) -> None:
    lps = [-0.1, -0.1, -0.1, -0.1, -5.0, -5.0] + [-0.1] * 44
    small = FakeBackend("fake-small", tokens=[f" s{i}" for i in range(50)], logprob=lps)
    cascade, _, _ = make(settings_factory(escalate_below=-1.0), small)
    outcome, text, _ = await collect(cascade)
    assert outcome.tier.name == "large" and outcome.escalated
    assert text == "Big answer"  # nothing of the small tier's answer
    assert small.closed_early == 1
    assert outcome.attempts[0].completion_tokens == 5  # mean of the first 5 is -1.08 < -1


async def test_stream_small_error_escalates_large_error_after_commit_raises(
        settings_factory: SettingsFactory) -> None:
    small = FakeBackend("fake-small", error=UpstreamError("cut"), fail_after=2)
    cascade, _, _ = make(settings_factory(escalate_below=-1.0), small)
    outcome, text, _ = await collect(cascade)
    assert outcome.reason == "upstream_error" and text == "Big answer"

    large = FakeBackend("fake-large", error=UpstreamError("cut"), fail_after=1)
    cascade, _, _ = make(settings_factory(escalate_below=-1.0), small, large)
    events = cascade.stream(REQ)
    assert isinstance(await anext(events), Outcome)
    with pytest.raises(UpstreamError):
        async for _ in events:
            pass


def _trace(out: Outcome) -> list[tuple[str, str, str | None, float | None]]:
    return [(a.tier, a.outcome, a.reason, a.score) for a in out.attempts]


@pytest.mark.parametrize(("small", "large", "cascade_cfg"), [
    (FakeBackend("fake-small"), None, {}),
    (FakeBackend("fake-small", logprob=-3.0), None, {}),
    (FakeBackend("fake-small", tokens=[" ", "\n"]), None, {}),
    (FakeBackend("fake-small", finish="length"), None, {"escalate_on_length": True}),
    (FakeBackend("fake-small", error=UpstreamTimeout("slow")), None, {}),
    (FakeBackend("fake-small", logprob=-3.0), FakeBackend("fake-large", error=UpstreamError("x")),
     {}),
])
async def test_run_and_stream_walk_the_tiers_alike(
        settings_factory: SettingsFactory, small: FakeBackend, large: FakeBackend | None,
        cascade_cfg: dict[str, Any]) -> None:
    """One tier loop: the same answers give the same attempts, reasons, scores and outcome."""
    settings = settings_factory(escalate_below=-1.0, cascade=cascade_cfg)
    ran = (await make(settings, small, large)[0].run(REQ)).outcome
    streamed, _, _ = await collect(make(settings, small, large)[0])
    assert _trace(streamed) == _trace(ran)
    assert (streamed.tier.name, streamed.escalated, streamed.degraded, streamed.reason) == (
        ran.tier.name, ran.escalated, ran.degraded, ran.reason)
    assert streamed.confidence == ran.confidence
    assert [a.cost_usd for a in streamed.attempts] == pytest.approx(
        [a.cost_usd for a in ran.attempts])


async def test_a_gated_attempt_stays_gated(settings_factory: SettingsFactory,
                                           tmp_path: Any) -> None:
    """The decision log marks the gate's prompt score as `gated`, so calibrate skips it."""
    from serve_helpers import write_policy

    gate = write_policy(tmp_path, "gate", {"kind": "threshold", "escalate_below": -2.0})
    settings = settings_factory(escalate_below=-100.0,
                                cascade={"prompt_gate": {"policy": str(gate)}})
    cascade, _, _ = make(settings, small=FakeBackend("fake-small", score_logprob=-5.0))
    out = (await cascade.run(REQ, prompt_text="gibberish")).outcome
    assert [a.outcome for a in out.attempts] == ["gated", "answered"]
    assert out.attempts[0].reason == "prompt_gate"


async def test_an_early_escalated_stream_degrades_to_a_fresh_whole_answer(
        settings_factory: SettingsFactory) -> None:
    """Tier 0's stream was closed on its first tokens; when the last tier fails, tier 0 is asked
    again and its whole answer streams, marked degraded, as `run` serves its whole answer."""
    tokens = [f" s{i}" for i in range(10)]
    small = FakeBackend("fake-small", tokens=tokens, logprob=-3.0)
    large = FakeBackend("fake-large", error=UpstreamError("down"))
    settings = settings_factory(escalate_below=-1.0)
    ran = (await make(settings, small, large)[0].run(REQ)).outcome
    streamed, text, _ = await collect(make(settings, small, large)[0])
    assert text == "".join(tokens)
    assert (streamed.tier.name, streamed.degraded, streamed.reason, streamed.confidence) == (
        ran.tier.name, ran.degraded, ran.reason, ran.confidence) == ("small", True,
                                                                    "low_confidence", -3.0)
    assert _trace(streamed)[:2] == _trace(ran)
    assert streamed.attempts[0].completion_tokens == 4  # judged and closed on 4 tokens
    fresh = streamed.attempts[2]
    assert (fresh.tier, fresh.outcome, fresh.completion_tokens) == ("small", "answered", 10)
    assert fresh.cost_usd > 0


async def test_a_degraded_stream_whose_fresh_answer_fails_raises(
        settings_factory: SettingsFactory) -> None:
    small = FakeBackend("fake-small", tokens=[f" s{i}" for i in range(10)], logprob=-3.0,
                        error=UpstreamError("tier 0 down too"), fail_from_call=2)
    large = FakeBackend("fake-large", error=UpstreamError("down"))
    cascade, _, _ = make(settings_factory(escalate_below=-1.0), small, large)
    with pytest.raises(UpstreamError, match="tier 0 down too"):
        await collect(cascade)
    assert small.calls == 2


async def test_after_the_time_bound_a_stream_is_judged_on_what_came(
        settings_factory: SettingsFactory) -> None:
    """What the bound costs: an answer that turns bad after it is no longer escalated."""
    lps = [-0.1] * 6 + [-5.0] * 6
    tokens = [f" s{i}" for i in range(12)]

    async def tier_of(bound_s: float) -> str:
        small = FakeBackend("fake-small", tokens=tokens, logprob=lps, delay_s=0.05)
        cascade, _, _ = make(settings_factory(escalate_below=-1.0, cascade={
            "stream_buffer_seconds": bound_s}), small)
        return (await collect(cascade))[0].tier.name

    assert await tier_of(10.0) == "large"  # early escalation on the bad tokens
    assert await tier_of(0.15) == "small"  # judged on its first 4-5 tokens, then flushed
