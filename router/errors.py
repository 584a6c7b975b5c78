"""One exception tree for the whole router.

    RouterError                      500  internal_error
    +-- ConfigError                  500  config_error        (start-up: names file and key)
    +-- ModelError                   500  model_error         (a model file missing or corrupt)
    +-- ScoringError                 400  invalid_request_error
    +-- PolicyError                  500  policy_error
    +-- InputError                   400  invalid_request_error (bad text or request)
    |   +-- UnknownModelError        404  model_not_found
    |   +-- PayloadTooLargeError     413  request_too_large
    |   +-- RequestTimeoutError      408  request_timeout    (the body did not arrive in time)
    +-- AuthError                    401  invalid_api_key
    +-- OverloadedError              429  rate_limit_exceeded (carries retry_after)
    +-- UpstreamError                502  upstream_error     (a tier failed to answer)
        +-- UpstreamTimeout          504  upstream_timeout
        +-- UpstreamUnavailable      503  upstream_unavailable (connection refused, 503)

Each class carries the HTTP status and the OpenAI error `type` that `router.serve` writes in
`{"error": {"message", "type", "code"}}`; services raise, they never return errors.

What a client reads: the message of a 4xx error (it is about the request), but for a 5xx only
its class's `public_message` and the request id (`client_body`); the message itself, which can
name upstream URLs and internal errors, goes to the log under that id. An error raised with
`public=True` (a message the router wrote about its own limits) is shown as it is.
"""

from __future__ import annotations

from typing import Any


class RouterError(Exception):
    status_code = 500
    type = "internal_error"
    public_message = "The router failed to process the request."

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None,
                 public: bool | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self._public = public

    @property
    def public(self) -> bool:
        """Whether a client may read `message` (default: only for 4xx errors)."""
        return self._public if self._public is not None else self.status_code < 500

    def body(self, message: str | None = None) -> dict[str, Any]:
        """The OpenAI error body."""
        return {
            "error": {
                "message": self.message if message is None else message,
                "type": self.type,
                "param": self.param,
                "code": self.code if self.code is not None else self.type,
            }
        }

    def client_body(self, request_id: str) -> dict[str, Any]:
        """The body a client reads: no internal text in a 5xx, the request id instead.

        Example: UpstreamError("upstream x (http://10.0.0.5/v1) timed out").client_body("req_1")
        -> {"error": {"message": "A model tier failed to answer. (request id req_1)", ...}}
        """
        if self.public:
            return self.body()
        return self.body(f"{self.public_message} (request id {request_id})")


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


class RequestTimeoutError(InputError):
    status_code = 408

    def __init__(self, message: str, **kw: Any):
        kw.setdefault("code", "request_timeout")
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
    public_message = "A model tier failed to answer."

    def __init__(self, message: str, *, upstream: str = "", retryable: bool = False, **kw: Any):
        super().__init__(message, **kw)
        self.upstream = upstream
        self.retryable = retryable


class UpstreamTimeout(UpstreamError):
    status_code = 504
    type = "upstream_timeout"
    public_message = "A model tier did not answer in time."


class UpstreamUnavailable(UpstreamError):
    status_code = 503
    type = "upstream_unavailable"
    public_message = "A model tier is unavailable."
