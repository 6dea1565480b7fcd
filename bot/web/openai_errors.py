"""Errors of the /v1 API in OpenAI's shape, so that OpenAI's clients raise their own exception
classes for them (and retry a 429 after Retry-After by themselves).

The operator console's "try it" shares the engine under the same budget and reports a full
share with the same `ApiError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi.responses import JSONResponse

from engine.base import EngineClosed, EngineError, EngineOverloaded, EngineTimeout

RETRY_AFTER_BUSY_S = 1


@dataclass(eq=False)
class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def invalid(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def busy(message: str) -> ApiError:
    return ApiError(429, message, type="rate_limit_error", code="rate_limit_exceeded",
                    headers={"Retry-After": str(RETRY_AFTER_BUSY_S)})


def engine_failure(exc: EngineError) -> ApiError:
    if isinstance(exc, EngineOverloaded):
        return busy("The model is busy: its request queue is full. Retry in a moment.")
    if isinstance(exc, EngineTimeout):
        return ApiError(504, f"The model did not answer in time ({exc}).", type="timeout", code="timeout")
    if isinstance(exc, EngineClosed):
        return ApiError(503, "The model is shutting down.", type="service_unavailable", code="model_unavailable")
    return ApiError(500, f"The model could not answer ({type(exc).__name__}).", type="server_error", code=exc.code)
