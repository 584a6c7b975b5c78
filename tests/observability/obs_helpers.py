"""Helpers of the observability tests: a vLLM-like upstream, a router in front of it, a real
Prometheus server on loopback, and the PromQL expressions of the dashboard and rule files."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fake_vllm
import httpx
import orjson
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from serve_helpers import write_policy
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from router.config import Settings, settings_from_dict
from router.serve.app import create_app
from tests.harness.server_thread import ServerThread, free_port

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
RULE_FILES = sorted((DEPLOY / "prometheus" / "rules").glob("*.yaml"))
RULE_TESTS = sorted((DEPLOY / "prometheus" / "tests").glob("*.yaml"))
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))

# served model names of the fake upstream -> the fake_vllm behaviour behind them
SMALL, LARGE = "small-model", "large-model"
SCORE_LOGPROB = -0.3  # every prompt token's logprob when the upstream scores a text

# prompt markers that change how the upstream answers
HARD = "[hard]"              # the small model answers with low confidence (-4.0 per token)
FAIL_SMALL = "[fail-small]"  # the small model answers 500
FAIL_LARGE = "[fail-large]"  # the large model answers 500


from tests.harness.prometheus import PromBin, install_prometheus  # noqa: E402,F401

# -- a vLLM-like upstream ------------------------------------------------------------------------

class VllmLike:
    """tests/serve/fake_vllm.py behind two served model names, with prompt markers, prompt
    scoring (`prompt_logprobs`) and vLLM's own Prometheus metrics on /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["model_name"]
        self.running = Gauge("vllm:num_requests_running", "Requests running.", labels,
                             registry=self.registry)
        self.waiting = Gauge("vllm:num_requests_waiting", "Requests waiting.", labels,
                             registry=self.registry)
        self.kv_cache = Gauge("vllm:kv_cache_usage_perc", "KV-cache usage (0-1).", labels,
                              registry=self.registry)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "End-to-end latency.", labels,
                             registry=self.registry)
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Time to first token.",
                              labels, registry=self.registry)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prompt tokens.", labels,
                                     registry=self.registry)
        self.generation_tokens = Counter("vllm:generation_tokens", "Generated tokens.", labels,
                                         registry=self.registry)
        for m in (SMALL, LARGE):
            self.running.labels(m).set(0)
            self.waiting.labels(m).set(0)
            self.kv_cache.labels(m).set(0.01)

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
        ])

    @staticmethod
    def behaviour(model: str, text: str) -> str:
        if model == SMALL:
            if FAIL_SMALL in text:
                return "error500"
            return "ok-low" if HARD in text else "ok"
        if model == LARGE:
            return "error500" if FAIL_LARGE in text else "ok"
        return model  # unknown names fall through to the fake (a 404-like answer)

    async def _forward(self, request: Request, body: dict[str, Any], text: str,
                       handler: Any) -> Response:
        model = body["model"]
        data = orjson.dumps({**body, "model": self.behaviour(model, text)})

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": data, "more_body": False}

        started = time.perf_counter()
        self.running.labels(model).inc()
        try:
            resp: Response = await handler(Request(request.scope, receive))
        finally:
            self.running.labels(model).dec()
        elapsed = time.perf_counter() - started
        self.e2e.labels(model).observe(elapsed)
        self.ttft.labels(model).observe(elapsed / 2)
        if resp.status_code == 200:
            self.prompt_tokens.labels(model).inc(7)
            self.generation_tokens.labels(model).inc(len(fake_vllm.TOKENS))
        return resp

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        text = " ".join(str(m.get("content", "")) for m in body.get("messages", []))
        return await self._forward(request, body, text, fake_vllm.chat)

    async def completions(self, request: Request) -> Response:
        body = await request.json()
        if body.get("prompt_logprobs") is not None:
            return self.score(body)
        return await self._forward(request, body, str(body.get("prompt", "")),
                                   fake_vllm.completions)

    def score(self, body: dict[str, Any]) -> Response:
        """vLLM's prompt-scoring answer: prompt_logprobs = [None, {id: {...}}, ...]."""
        model, prompt = body["model"], str(body["prompt"])
        tokens = re.findall(r"\s*\S+", prompt) or [prompt]
        entries: list[Any] = [None] + [
            {str(100 + i): {"logprob": SCORE_LOGPROB, "rank": 1, "decoded_token": tok}}
            for i, tok in enumerate(tokens[1:])]
        self.prompt_tokens.labels(model).inc(len(tokens))
        return JSONResponse({
            "id": "cmpl-score", "object": "text_completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "text": ".", "logprobs": None, "finish_reason": "length",
                         "stop_reason": None, "prompt_logprobs": entries}],
            "usage": {"prompt_tokens": len(tokens), "completion_tokens": 1,
                      "total_tokens": len(tokens) + 1},
        })

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": "vllm", "root": m,
             "parent": None, "max_model_len": 2048} for m in (SMALL, LARGE)]})

    async def metrics(self, request: Request) -> Response:
        return Response(generate_latest(self.registry),
                        media_type="text/plain; version=0.0.4; charset=utf-8")


def start_upstream() -> ServerThread:
    return ServerThread(VllmLike().app())


# -- the router under test -------------------------------------------------------------------------

SMALL_PRICE = {"prompt_per_mtok": 0.5, "completion_per_mtok": 1.5}
LARGE_PRICE = {"gpu_hour_usd": 2.5, "tokens_per_second": 400.0}


def router_settings(upstream_url: str, tmp: Path) -> Settings:
    policy = write_policy(tmp, "policy", {"kind": "threshold", "escalate_below": -1.0})
    common = {"backend": "openai_http", "base_url": f"{upstream_url}/v1", "max_retries": 0,
              "timeout_s": 10}
    raw = {
        "server": {"max_body_bytes": 4096, "decision_log": {"path": str(tmp / "decisions.jsonl")}},
        "tiers": [{"name": "small", "model": SMALL, "price": SMALL_PRICE, **common},
                  {"name": "large", "model": LARGE, "price": LARGE_PRICE, **common}],
        "cascade": {"policy": str(policy), "shadow": {"fraction": 1.0, "max_concurrency": 2}},
    }
    return settings_from_dict(raw).model_copy(update={"source": tmp / "config.yaml"})


@dataclass
class RouterUnderTest:
    server: ServerThread
    settings: Settings
    decision_log: Path
    app: Any

    @property
    def url(self) -> str:
        return self.server.url

    def shadow_in_flight(self) -> int:
        """Quality samples still running in the app (configured with cascade.shadow)."""
        shadow = self.app.state.serve.shadow
        return 0 if shadow is None else int(shadow.in_flight)


@contextlib.contextmanager
def start_router(upstream_url: str, tmp: Path) -> Iterator[RouterUnderTest]:
    settings = router_settings(upstream_url, tmp)
    app = create_app(settings, environ={}, preload=False)
    assert settings.server.decision_log is not None
    with ServerThread(app) as server:
        yield RouterUnderTest(server, settings, settings.server.decision_log.path, app)


def read_decisions(path: Path, n: int, timeout_s: float = 15.0,
                   kind: str | None = None) -> list[dict[str, Any]]:
    """The decision log's request records (or, with `kind="shadow"`, its quality samples' lines)
    once it holds at least `n` of them (it is written in the background)."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        records = [r for r in map(json.loads, lines) if r.get("kind") == kind]
        if len(records) >= n or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


# -- Prometheus ------------------------------------------------------------------------------------

def prometheus_config(*, router: str, upstream: str, self_addr: str,
                      interval_s: int = 1) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with loopback targets, short intervals and the repo's rule
    files (job names and everything else as deployed)."""
    cfg: dict[str, Any] = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    cfg["global"] = {"scrape_interval": f"{interval_s}s", "evaluation_interval": f"{interval_s}s",
                     "scrape_timeout": f"{interval_s}s"}
    cfg["rule_files"] = [str(p) for p in RULE_FILES]
    targets = {"router": [router], "vllm": [upstream], "prometheus": [self_addr]}
    for job in cfg["scrape_configs"]:
        job["static_configs"] = [{"targets": targets[job["job_name"]]}]
    return cfg


class PrometheusServer:
    """`prometheus` on 127.0.0.1:<free port> with a temporary data dir."""

    def __init__(self, binary: str, tmp: Path, *, router: str, upstream: str) -> None:
        self.port = free_port()
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.config = tmp / "prometheus.yml"
        addr = f"127.0.0.1:{self.port}"
        self.config.write_text(yaml.safe_dump(prometheus_config(
            router=router, upstream=upstream, self_addr=addr)))
        self.cmd = [binary, f"--config.file={self.config}",
                    f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address={addr}",
                    "--log.level=warn", "--web.enable-lifecycle"]
        self.log = tmp / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(base_url=f"http://{addr}", timeout=10)

    def __enter__(self) -> PrometheusServer:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited ({self.proc.returncode}):\n"
                                   f"{self.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if self.client.get("/-/ready").status_code == 200:
                    return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"prometheus not ready in 30 s:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        self.client.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def query(self, expr: str) -> list[dict[str, Any]]:
        resp = self.client.get("/api/v1/query", params={"query": expr})
        body = resp.json()
        if resp.status_code != 200 or body.get("status") != "success":
            raise AssertionError(f"{expr!r}: {resp.status_code} {body.get('error', body)}")
        result: list[dict[str, Any]] = body["data"]["result"]
        if body["data"]["resultType"] == "scalar":
            return [{"metric": {}, "value": result}]
        return result

    def targets_up(self) -> dict[str, str]:
        data = self.client.get("/api/v1/targets").json()["data"]["activeTargets"]
        return {t["labels"]["job"]: t["health"] for t in data}


# -- the expressions under test --------------------------------------------------------------------

def _walk_exprs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "expr" and isinstance(v, str):
                yield v
            else:
                yield from _walk_exprs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk_exprs(v)


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, expr) for every PromQL expression in every dashboard JSON."""
    out = []
    for path in DASHBOARDS:
        for expr in _walk_exprs(json.loads(path.read_text())):
            out.append((f"{path.name}", expr))
    return out


def rules() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            out += [(f"{path.name}:{group['name']}", r) for r in group["rules"]]
    return out


_CMP = re.compile(r"(==|!=|>=|<=|>|<)(?!\s*bool\b)")


def with_bool(expr: str) -> str:
    """An alert condition with every comparison turned into a `bool` one, so that it returns its
    operands' samples (0 or 1) whether or not the alert fires. Label matchers (inside braces) and
    strings are left alone.

    Example: 'a{x!="1"} > 0.5 or a < 0.1' -> 'a{x!="1"} > bool 0.5 or a < bool 0.1'
    """
    out: list[str] = []
    i, depth, quote = 0, 0, ""
    while i < len(expr):
        c = expr[i]
        if quote:
            out.append(c)
            if c == "\\" and i + 1 < len(expr):
                out.append(expr[i + 1])
                i += 1
            elif c == quote:
                quote = ""
        elif c in "\"'`":
            quote = c
            out.append(c)
        elif c == "{":
            depth += 1
            out.append(c)
        elif c == "}":
            depth -= 1
            out.append(c)
        elif depth == 0 and (m := _CMP.match(expr, i)) and not expr.startswith(("=~", "!~"), i):
            out.append(f"{m.group(1)} bool")
            i += len(m.group(1))
            continue
        else:
            out.append(c)
        i += 1
    return "".join(out)


def all_exprs() -> list[tuple[str, str]]:
    """(where, expr): the dashboard's expressions, every recording rule's expression and recorded
    series, and every alert's condition in its `bool` form."""
    out = list(dashboard_exprs())
    for where, rule in rules():
        if "record" in rule:
            out.append((f"{where} record {rule['record']}", rule["expr"]))
            out.append((f"{where} series {rule['record']}", rule["record"]))
        else:
            out.append((f"{where} alert {rule['alert']}", with_bool(rule["expr"])))
    return out
