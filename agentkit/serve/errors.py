"""OpenAI-shaped errors: every refused request gets `{"error": {message, type, param, code}}` and a 4xx.

Why one exception type carrying the HTTP status: validation happens in several layers (the body, the
messages, the DSML encoder, the engine's own admission checks) and each must be able to refuse a request
without knowing how the response is written. The official `openai` client maps the status to its typed
exceptions (400 BadRequestError, 401 AuthenticationError, 404 NotFoundError, ...), so the status is part
of the contract, not decoration.
"""

from __future__ import annotations

from typing import Any

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    500: "server_error",
    503: "server_error",
}


class APIError(Exception):
    """A request the server refuses (or could not serve), as the OpenAI API reports it."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": _TYPES.get(self.status, "invalid_request_error"),
                "param": self.param,
                "code": self.code,
            }
        }


def bad_request(message: str, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


__all__ = ["APIError", "bad_request"]
