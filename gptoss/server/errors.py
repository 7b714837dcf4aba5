"""Errors in the OpenAI shape: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gptoss.conversation.openai_chat import ConversationError
from gptoss.engine.async_engine import EngineStopped, GenerationFailed, QueueFull
from gptoss.errors import GptossError


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code, self.headers = (
            status,
            message,
            type,
            param,
            code,
            headers,
        )


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _response(exc: APIError) -> JSONResponse:
    return JSONResponse(
        error_body(exc.message, exc.type, exc.param, exc.code), status_code=exc.status, headers=exc.headers
    )


def _loc(loc) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out


def _unparsable(cause: BaseException | None) -> str | None:
    """Why a body the JSON parser raised on is not JSON, for the errors that are not a JSONDecodeError."""
    if isinstance(cause, UnicodeDecodeError):
        return f"not UTF-8: byte 0x{cause.object[cause.start]:02x} at position {cause.start}"
    if isinstance(cause, RecursionError):
        return "nested too deeply"
    return None


def install(app) -> None:
    @app.exception_handler(APIError)
    async def _api(request: Request, exc: APIError):
        return _response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        if first.get("type") == "json_invalid":
            return _response(
                APIError(
                    400,
                    f"the request body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})",
                    code="invalid_json",
                )
            )
        where = _loc(first.get("loc", ()))
        if first.get("type") == "missing":
            message = f"{where}: required field is missing"
        elif first.get("type") == "model_attributes_type" and not where:
            message = "the request body must be a JSON object"
        else:
            message = f"{where}: {first.get('msg', 'invalid value')}" + (
                f" (found {first['input']!r})"
                if "input" in first and not isinstance(first["input"], (dict, list))
                else ""
            )
        return _response(APIError(400, message, param=where or None, code="invalid_value"))

    @app.exception_handler(ConversationError)
    async def _conversation(request: Request, exc: ConversationError):
        return _response(APIError(400, str(exc), param=exc.param))

    @app.exception_handler(QueueFull)
    async def _busy(request: Request, exc: QueueFull):
        return _response(
            APIError(
                429,
                f"the server is busy: {exc}; retry shortly",
                type="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": "1"},
            )
        )

    @app.exception_handler(EngineStopped)
    async def _stopped(request: Request, exc: EngineStopped):  # a tensor parallel rank is gone; the server exits
        return _response(APIError(503, str(exc), type="server_error", code="engine_stopped"))

    @app.exception_handler(GenerationFailed)
    async def _failed(request: Request, exc: GenerationFailed):  # the server's fault, and this request's only
        return _response(APIError(500, str(exc), type="server_error", code="generation_failed"))

    @app.exception_handler(GptossError)
    async def _ours(request: Request, exc: GptossError):
        return _response(APIError(400, str(exc)))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        why = _unparsable(exc.__cause__)
        if exc.status_code == 400 and why:  # FastAPI's generic "error parsing the body": say what it was
            return _response(APIError(400, f"the request body is not valid JSON ({why})", code="invalid_json"))
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
        code = {413: "body_too_large", 408: "body_timeout"}.get(exc.status_code)
        return _response(APIError(exc.status_code, message, type=kind, code=code))
