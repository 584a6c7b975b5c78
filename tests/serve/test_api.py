"""The HTTP API with fake backends: OpenAI bodies, error bodies, protection, metrics, log."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY
from serve_helpers import FakeBackend
from starlette.testclient import TestClient

from router.config import Settings
from router.serve import create_app

SettingsFactory = Callable[..., Settings]
CHAT = {"model": "cascade", "messages": [{"role": "user", "content": "hi"}]}


def client_for(settings: Settings, **backends: FakeBackend) -> TestClient:
    b = {"small": FakeBackend("fake-small"), "large": FakeBackend("fake-large", tokens=["Big"]),
         **backends}
    return TestClient(create_app(settings, b, environ={"KEYS": "k2, k3"}))


@pytest.fixture
def client(settings_factory: SettingsFactory) -> Iterator[TestClient]:
    with client_for(settings_factory()) as c:
        yield c


def assert_error(resp: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code
    return dict(err)


def test_chat_reply_shape_and_headers(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "fake-small"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello there!"}
    assert body["choices"][0]["logprobs"] is None  # stripped: the client did not ask
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    assert r.headers["x-router-tier"] == "small" and r.headers["x-router-escalated"] == "false"
    assert float(r.headers["x-router-confidence"]) == pytest.approx(-0.1)


def test_logprobs_when_asked(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json={**CHAT, "logprobs": True, "top_logprobs": 2})
    content = r.json()["choices"][0]["logprobs"]["content"]
    assert content[0]["token"] == "Hello" and content[0]["bytes"] == list(b"Hello")
    assert [t["token"] for t in content[0]["top_logprobs"]] == ["Hello", "x"]
    r = client.post("/v1/completions", json={"model": "cascade", "prompt": "hi", "logprobs": 1})
    lp = r.json()["choices"][0]["logprobs"]
    assert lp["tokens"] == ["Hello", " there", "!"] and lp["text_offset"] == [0, 5, 11]
    assert lp["top_logprobs"][0] == {"Hello": pytest.approx(-0.1)}


def test_models_health_metrics(client: TestClient) -> None:
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert ids == ["cascade", "fake-small", "fake-large"]
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    client.post("/v1/chat/completions", json=CHAT)
    text = client.get("/metrics").text
    for name in ("router_requests_total", "router_escalations_total", "router_confidence_bucket",
                 "router_tokens_total", "router_cost_usd_total",
                 "router_counterfactual_cost_usd_total", "router_request_duration_seconds",
                 "router_upstream_request_duration_seconds", "router_in_flight_requests",
                 "router_threshold"):
        assert name in text


def test_readyz_reports_a_broken_tier(settings_factory: SettingsFactory,
                                      caplog: pytest.LogCaptureFixture) -> None:
    from router.errors import UpstreamUnavailable

    down = UpstreamUnavailable("http://10.1.2.3:8001/v1 refused the connection")
    with client_for(settings_factory(), large=FakeBackend("fake-large", error=down)) as c:
        r = c.get("/readyz")
    body = r.json()
    assert r.status_code == 503 and body["tiers"] == {"small": "ok",
                                                      "large": "upstream_unavailable"}
    assert "10.1.2.3" not in r.text  # the reason is logged under the request id, not shown
    logged = [rec.getMessage() for rec in caplog.records if body["request_id"] in rec.getMessage()]
    assert len(logged) == 1 and "10.1.2.3" in logged[0]


@pytest.mark.parametrize(("body", "param", "code"), [
    ({"model": "cascade"}, "messages", "missing_required_parameter"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "model", "missing_required_parameter"),
    ({**CHAT, "messages": "hi"}, "messages", "invalid_type"),
    ({**CHAT, "messages": []}, "messages", "invalid_value"),
    ({**CHAT, "messages": [{"role": "wizard", "content": "hi"}]}, "messages", "invalid_value"),
    ({**CHAT, "max_tokens": "many"}, "max_tokens", "invalid_type"),
    ({**CHAT, "max_tokens": -3}, "max_tokens", "invalid_value"),
    ({**CHAT, "temperature": 9}, "temperature", "invalid_value"),
    ({**CHAT, "stream": "yes please"}, "stream", "invalid_type"),
    ({**CHAT, "n": 3}, "n", "invalid_value"),
])
def test_bad_chat_requests_are_400(client: TestClient, body: dict[str, Any], param: str,
                                   code: str) -> None:
    err = assert_error(client.post("/v1/chat/completions", json=body), 400)
    assert err["param"] == param and err["type"] == "invalid_request_error"
    assert err["code"] == code


def test_bad_json_and_completion_bodies(client: TestClient) -> None:
    assert_error(client.post("/v1/chat/completions", content=b"{nope"), 400)
    assert_error(client.post("/v1/chat/completions", content=b"[1, 2]"), 400)
    assert_error(client.post("/v1/completions", json={"model": "cascade"}), 400)
    assert_error(client.post("/v1/completions", json={"model": "cascade", "prompt": ""}), 400)
    assert_error(client.post("/v1/completions", json={"model": "cascade", "prompt": "x",
                                                      "echo": True}), 400)


def test_unknown_model_and_route_are_404(client: TestClient) -> None:
    assert_error(client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-9"}), 404,
                 "model_not_found")
    assert_error(client.post("/v1/embeddings", json={}), 404)


def test_oversized_body_is_413(settings_factory: SettingsFactory) -> None:
    with client_for(settings_factory(server={"max_body_bytes": 2048})) as c:
        big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
        assert_error(c.post("/v1/chat/completions", json=big), 413, "request_too_large")

        def chunks() -> Iterator[bytes]:  # no content-length: counted while read
            yield b'{"model": "cascade", "messages": [{"role": "user", "content": "'
            for _ in range(10):
                yield b"y" * 1000
            yield b'"}]}'
        assert_error(c.post("/v1/chat/completions", content=chunks()), 413)


def test_max_tokens_is_clamped(settings_factory: SettingsFactory) -> None:
    seen: list[int] = []

    class Spy(FakeBackend):
        async def generate(self, request: Any) -> Any:
            seen.append(request.max_tokens)
            return await super().generate(request)

    with client_for(settings_factory(server={"max_tokens_limit": 64}),
                    small=Spy("fake-small")) as c:
        c.post("/v1/chat/completions", json={**CHAT, "max_tokens": 100000})
        c.post("/v1/chat/completions", json=CHAT)
    assert seen == [64, 64]  # default_max_tokens 256 is clamped too


def test_api_keys(settings_factory: SettingsFactory) -> None:
    settings = settings_factory(server={"api_keys": ["k1"], "api_keys_env": "KEYS"})
    with client_for(settings) as c:
        assert_error(c.post("/v1/chat/completions", json=CHAT), 401, "invalid_api_key")
        bad = {"Authorization": "Bearer nope"}
        assert_error(c.post("/v1/chat/completions", json=CHAT, headers=bad), 401)
        for key in ("k1", "k2", "k3"):
            ok = c.post("/v1/chat/completions", json=CHAT,
                        headers={"Authorization": f"Bearer {key}"})
            assert ok.status_code == 200
        assert c.get("/healthz").status_code == 200  # probes need no key


def test_overload_is_429_with_retry_after(settings_factory: SettingsFactory,
                                          serve_thread: Callable[[Any], Any]) -> None:
    import httpx

    settings = settings_factory(server={"max_in_flight": 1, "max_queue": 0})
    slow = FakeBackend("fake-small", delay_s=1.0)
    app = create_app(settings, {"small": slow, "large": FakeBackend("fake-large")})
    server = serve_thread(app)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
            return list(await asyncio.gather(*(c.post("/v1/chat/completions", json=CHAT)
                                               for _ in range(3))))

    responses = asyncio.run(burst())
    codes = sorted(r.status_code for r in responses)
    assert codes == [200, 429, 429]
    limited = next(r for r in responses if r.status_code == 429)
    assert int(limited.headers["retry-after"]) >= 1
    assert_error(limited, 429)


def test_stream_reply_and_usage(client: TestClient) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.headers["x-router-tier"] == "small"
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [orjson.loads(ln[6:]) for ln in lines[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Hello there!"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] == 3


def test_decision_log(settings_factory: SettingsFactory, tmp_path: Path) -> None:
    log = tmp_path / "logs" / "decisions.jsonl"
    settings = settings_factory(escalate_below=-1.0,
                                server={"decision_log": {"path": str(log)}})
    with client_for(settings, small=FakeBackend("fake-small", logprob=-2.0)) as c:
        c.post("/v1/chat/completions", json=CHAT)
        with c.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
            r.read()
    lines = [orjson.loads(x) for x in log.read_bytes().splitlines()]
    assert len(lines) == 2
    rec = lines[0]
    assert rec["final_tier"] == "large" and rec["escalated"] and rec["reason"] == "low_confidence"
    assert [t["outcome"] for t in rec["tiers"]] == ["escalated", "answered"]
    assert rec["tiers"][0]["score"] == pytest.approx(-2.0)
    assert "prompt" not in rec and len(rec["prompt_sha256"]) == 64
    assert rec["cost_usd"] == pytest.approx(sum(t["cost_usd"] for t in rec["tiers"]))
    assert lines[1]["stream"] is True


def test_a_decision_log_with_prompts_feeds_a_rule_with_text(settings_factory: SettingsFactory,
                                                             tmp_path: Path) -> None:
    """With include_prompt the log carries each question and judged answer, which
    `router calibrate --learn --text` learns from; without it, --text says what is missing."""
    from serve_helpers import write_policy

    from router.cli import main

    learned = {"name": "learned", "features": ["mean_logprob"], "center": [-1.0],
               "scale": [1.0], "weights": [1.0], "intercept": 0.0}
    policy = write_policy(tmp_path, "learned", {"kind": "threshold", "escalate_below": -9.0},
                          signal=learned)
    logs = {flag: tmp_path / f"log-{flag}.jsonl" for flag in (True, False)}
    labels = []
    for flag, log in logs.items():
        settings = settings_factory(cascade={"policy": str(policy)}, server={
            "decision_log": {"path": str(log), "include_prompt": flag}})
        with client_for(settings) as c:
            for i in range(16):
                q = f"What is {i} + {i}?" if i % 2 else f"What is the capital of land {i}?"
                r = c.post("/v1/chat/completions", json={**CHAT, "messages": [
                    {"role": "user", "content": q}]})
                if flag:
                    labels.append({"id": r.json()["id"], "correct": i % 2 == 0})
    rec = orjson.loads(logs[True].read_bytes().splitlines()[1])
    assert rec["question"] == "What is 1 + 1?" and rec["tiers"][0]["text"] == "Hello there!"
    assert "text" not in orjson.loads(logs[False].read_bytes().splitlines()[1])["tiers"][0]
    lab = tmp_path / "labels.jsonl"
    lab.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in labels))
    out = tmp_path / "fitted.yaml"
    args = ["calibrate", "--learn", "--features", "mean_logprob", "--text", "question",
            "--labels", str(lab), "--folds", "2", "--target-escalation", "0.5",
            "--policy-out", str(out)]
    assert main([*args, "--log", str(logs[True])]) == 0
    from router.learned import LearnedSignal
    from router.policy import load_policy

    fitted = load_policy(out).signal
    assert isinstance(fitted, LearnedSignal)
    assert fitted.text[0].weights["capital"] > 0 > fitted.text[0].weights["1"]
    # the log without prompts: ids differ, so label its own requests the same way
    ids = [orjson.loads(x)["id"] for x in logs[False].read_bytes().splitlines()]
    lab.write_bytes(b"".join(orjson.dumps({"id": rid, "correct": i % 2 == 0}) + b"\n"
                             for i, rid in enumerate(ids)))
    assert main([*args, "--log", str(logs[False])]) == 2


def test_metrics_count_escalations(settings_factory: SettingsFactory) -> None:
    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = value("router_escalations_total", from_tier="small", to_tier="large",
                   reason="low_confidence")
    req_before = value("router_requests_total", tier="large", endpoint="chat", status="200")
    with client_for(settings_factory(escalate_below=-1.0),
                    small=FakeBackend("fake-small", logprob=-2.0)) as c:
        c.post("/v1/chat/completions", json=CHAT)
    assert value("router_escalations_total", from_tier="small", to_tier="large",
                 reason="low_confidence") == before + 1
    assert value("router_requests_total", tier="large", endpoint="chat",
                 status="200") == req_before + 1


def test_graceful_shutdown_finishes_in_flight(settings_factory: SettingsFactory) -> None:
    import threading

    import httpx

    from tests.harness.server_thread import ServerThread

    slow = FakeBackend("fake-small", delay_s=1.0)
    app = create_app(settings_factory(), {"small": slow, "large": FakeBackend("fake-large")})
    server = ServerThread(app).__enter__()
    result: dict[str, Any] = {}

    def call() -> None:
        result["r"] = httpx.post(f"{server.url}/v1/chat/completions", json=CHAT, timeout=10)

    t = threading.Thread(target=call)
    t.start()
    while slow.calls == 0:  # the request is in flight
        threading.Event().wait(0.01)
    server.server.should_exit = True  # what SIGTERM does
    t.join(timeout=10)
    server.thread.join(timeout=10)
    assert result["r"].status_code == 200 and not server.thread.is_alive()


@pytest.mark.parametrize("stream", [False, True])
def test_request_timeout_is_a_504_before_anything_was_sent(settings_factory: SettingsFactory,
                                                           stream: bool) -> None:
    settings = settings_factory(server={"request_timeout_s": 0.2})
    slow = {"small": FakeBackend("fake-small", delay_s=5.0),
            "large": FakeBackend("fake-large", delay_s=5.0)}
    with client_for(settings, **slow) as c:
        r = c.post("/v1/chat/completions", json={**CHAT, "stream": stream})
    err = assert_error(r, 504)
    assert "server.request_timeout_s" in err["message"]
