"""The hot lane answers exactly as the app's handlers would: error bodies, 405, 500."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from serve_helpers import FakeBackend
from starlette.testclient import TestClient

from router.config import Settings
from router.serve import create_app
from router.serve.routes import chat

CHAT = {"model": "cascade", "messages": [{"role": "user", "content": "hi"}]}


def client(settings: Settings) -> TestClient:
    return TestClient(create_app(settings, {"small": FakeBackend("fake-small"),
                                            "large": FakeBackend("fake-large")}, environ={}),
                      raise_server_exceptions=False)


def test_errors_and_methods(settings_factory: Callable[..., Settings]) -> None:
    with client(settings_factory()) as c:
        bad = c.post("/v1/chat/completions", content=b"{not json")
        assert bad.status_code == 400
        assert bad.json()["error"]["type"] == "invalid_request_error"
        unknown = c.post("/v1/completions", json={"model": "nope", "prompt": "x"})
        assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "model"
        wrong_method = c.get("/v1/chat/completions")
        assert wrong_method.status_code == 405 and "error" in wrong_method.json()
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_unexpected_error_is_a_500_body(settings_factory: Callable[..., Settings],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(chat, "respond", broken)
    with client(settings_factory()) as c:
        r = c.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 500
    message = r.json()["error"]["message"]
    assert "request id req_" in message and "a bug" not in message  # internal text stays out
