"""One exception tree for the whole router.

    RouterError                      500  internal_error
    +-- ConfigError                  500  config_error        (start-up: names file and key)
    +-- ModelError                   500  model_error         (a model file missing or corrupt)
    +-- ScoringError                 400  invalid_request_error
    +-- PolicyError                  500  policy_error
    +-- InputError                   400  invalid_request_error (bad text or request)
    |   +-- UnknownModelError        404  model_not_found
    |   +-- PayloadTooLargeError     413  request_too_large
    +-- AuthError                    401  invalid_api_key
    +-- OverloadedError              429  rate_limit_exceeded (carries retry_after)
    +-- UpstreamError                502  upstream_error     (a tier failed to answer)
        +-- UpstreamTimeout          504  upstream_timeout
        +-- UpstreamUnavailable      503  upstream_unavailable (connection refused, 503)

Each class carries the HTTP status and the OpenAI error `type` that `router.serve` writes in
`{"error": {"message", "type", "code"}}`; services raise, they never return errors.
"""

from __future__ import annotations

from typing import Any


class RouterError(Exception):
    status_code = 500
    type = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param

    def body(self) -> dict[str, Any]:
        """The OpenAI error body."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code if self.code is not None else self.type,
            }
        }


class ConfigError(RouterError):
    type = "config_error"


class ModelError(RouterError):
    type = "model_error"


class ScoringError(RouterError):
    status_code = 400
    type = "invalid_request_error"


class PolicyError(RouterError):
    type = "policy_error"


class InputError(RouterError):
    status_code = 400
    type = "invalid_request_error"


class UnknownModelError(InputError):
    status_code = 404
    type = "invalid_request_error"

    def __init__(self, message: str, **kw: Any):
        kw.setdefault("code", "model_not_found")
        super().__init__(message, **kw)


class PayloadTooLargeError(InputError):
    status_code = 413

    def __init__(self, message: str, **kw: Any):
        kw.setdefault("code", "request_too_large")
        super().__init__(message, **kw)


class AuthError(RouterError):
    status_code = 401
    type = "invalid_request_error"

    def __init__(self, message: str, **kw: Any):
        kw.setdefault("code", "invalid_api_key")
        super().__init__(message, **kw)


class OverloadedError(RouterError):
    status_code = 429
    type = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float = 1.0, **kw: Any):
        super().__init__(message, **kw)
        self.retry_after = retry_after


class UpstreamError(RouterError):
    status_code = 502
    type = "upstream_error"

    def __init__(self, message: str, *, upstream: str = "", retryable: bool = False, **kw: Any):
        super().__init__(message, **kw)
        self.upstream = upstream
        self.retryable = retryable


class UpstreamTimeout(UpstreamError):
    status_code = 504
    type = "upstream_timeout"


class UpstreamUnavailable(UpstreamError):
    status_code = 503
    type = "upstream_unavailable"
