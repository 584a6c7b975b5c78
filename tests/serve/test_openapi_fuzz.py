"""The published OpenAPI document is accurate, and a bounded schemathesis run against a real
router (two openai_http tiers on the fake vLLM, loopback) finds no response >= 500, no error
that is not OpenAI's error body, no answer that breaks the document, and no invalid input that
is accepted. Deterministic (derandomized) so a failure reproduces."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from fake_vllm import RECEIVED, fake_vllm_app
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from serve_helpers import make_settings

from router.serve import create_app
from tests.harness.server_thread import ServerThread

pytestmark = pytest.mark.timeout(300)
#: examples per operation, (positive, negative): about 2,000 requests, a minute of CPU here
BUDGET = {("POST", "/v1/chat/completions"): (600, 300),
          ("POST", "/v1/completions"): (700, 350),
          ("GET", "/v1/models"): (1, 0), ("GET", "/healthz"): (1, 0),
          ("GET", "/readyz"): (1, 0), ("GET", "/metrics"): (1, 0)}
ERROR_KEYS = {"message", "type", "param", "code"}


def openai_error_body(ctx: Any, response: Any, case: Any) -> None:
    """Every error is `{"error": {"message": str, "type": str, "param", "code"}}`."""
    if response.status_code < 400:
        return
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert isinstance(err, dict) and set(err) == ERROR_KEYS, err
    assert isinstance(err["message"], str) and err["message"] and isinstance(err["type"], str)
    assert err["param"] is None or isinstance(err["param"], str)
    assert err["code"] is None or isinstance(err["code"], str)


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, openai_error_body]


@pytest.fixture(scope="module")
def router_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with ServerThread(fake_vllm_app()) as upstream:
        url = f"{upstream.url}/v1"
        tiers = [{"name": n, "backend": "openai_http", "base_url": url, "model": m,
                  "timeout_s": 5.0}
                 for n, m in (("small", "ok-low"), ("large", "ok"))]
        settings = make_settings(tmp_path_factory.mktemp("fuzz"), tiers=tiers,
                                 server={"max_tokens_limit": 16})
        with ServerThread(create_app(settings)) as router:
            yield router.url
    RECEIVED.clear()


def test_the_document_describes_every_route_with_its_body(router_url: str) -> None:
    doc = httpx.get(f"{router_url}/openapi.json").json()
    assert set(doc["paths"]) == {"/v1/chat/completions", "/v1/completions", "/v1/models",
                                 "/healthz", "/readyz", "/metrics"}
    for path, model in (("/v1/chat/completions", "ChatBody"), ("/v1/completions",
                                                               "CompletionBody")):
        op = doc["paths"][path]["post"]
        ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref == f"#/components/schemas/{model}"
        props = doc["components"]["schemas"][model]["properties"]
        assert props["model"]["enum"] == ["cascade", "large", "ok", "ok-low", "small"]
        assert props["stream"]["type"] == "boolean"
        assert {"400", "404", "413", "429", "502", "503", "504"} <= set(op["responses"])
    assert httpx.get(f"{router_url}/docs").status_code == 404  # docs stay off


@pytest.mark.slow
@pytest.mark.parametrize(("method", "path", "mode"), [
    (method, path, mode) for (method, path), counts in BUDGET.items()
    for mode, n in zip((GenerationMode.POSITIVE, GenerationMode.NEGATIVE), counts, strict=True)
    if n > 0])
def test_schemathesis_finds_nothing(router_url: str, method: str, path: str,
                                    mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{router_url}/openapi.json")
    operation = schema[path][method]
    checks = [*CHECKS, negative_data_rejection] if mode is GenerationMode.NEGATIVE else CHECKS
    positive, negative = BUDGET[(method, path)]
    calls = 0

    @settings(max_examples=positive if mode is GenerationMode.POSITIVE else negative,
              deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        nonlocal calls
        calls += 1
        case.call_and_validate(base_url=router_url, checks=checks, timeout=30)

    started, cpu = time.monotonic(), time.process_time()
    run()
    RECEIVED.clear()
    print(f"{method} {path} {mode}: {calls} cases in {time.monotonic() - started:.1f} s "
          f"({time.process_time() - cpu:.1f} s CPU)")
