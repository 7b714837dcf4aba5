"""The FastAPI application: authentication, body limits, health, models, metrics, and the routes of each API
(chat_completions, completions, responses, moderations: each module registers its own)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from gptoss.engine.llm import LLM
from gptoss.server import chat_completions, completions, errors, moderations, responses
from gptoss.server.http import BODY_TIMEOUT
from gptoss.server.state import OPEN_PATHS, OWNER_KEY, ServerConfig, ServerState

__all__ = ["BodyLimit", "ServerConfig", "create_app"]


class BodyLimit:
    """Stops reading a request body past ``limit`` bytes, whether or not it declared its length
    (chunked uploads have no Content-Length to check up front), or past ``timeout`` seconds (a client
    trickling its body in: 408)."""

    def __init__(self, app, limit: int, timeout: float = BODY_TIMEOUT):
        self.app, self.limit, self.timeout = app, limit, timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        seen = 0
        complete = False
        deadline: float | None = None

        async def limited():
            nonlocal seen, complete, deadline
            if complete:  # the body is in; later receives wait for a disconnect, however long
                return await receive()
            loop = asyncio.get_running_loop()
            deadline = deadline or loop.time() + self.timeout
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise StarletteHTTPException(
                    408, f"the request body did not arrive within {self.timeout:g} s"
                ) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise StarletteHTTPException(413, f"the request body is over the limit of {self.limit} bytes")
                complete = not message.get("more_body", False)
            else:
                complete = True
            return message

        await self.app(scope, limited, send)


def create_app(llm: LLM, config: ServerConfig | None = None) -> FastAPI:
    config = config or ServerConfig()
    state = ServerState(llm, config)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        if state.guard is not None:
            await state.guard.aclose()
        state.engine.shutdown()
        state.workers.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="gptoss", version="0.1.0", lifespan=lifespan)
    app.state.gptoss = state
    errors.install(app)
    app.add_middleware(BodyLimit, limit=config.max_body_bytes, timeout=config.body_timeout)

    keys = [k.encode() for k in ([config.api_key] if config.api_key else []) + list(config.api_keys)]

    @app.middleware("http")
    async def guard(request: Request, call_next):
        # Every route that computes or reveals something wants a key; /health stays open for load balancers.
        if keys and request.url.path not in OPEN_PATHS:
            header = request.headers.get("authorization", "")
            token = (header[7:] if header.lower().startswith("bearer ") else "").encode()
            matched = [k for k in keys if hmac.compare_digest(token, k)]  # every key compared, in constant time
            if not matched:
                return JSONResponse(
                    errors.error_body(
                        "invalid or missing API key (send 'Authorization: Bearer KEY')",
                        "authentication_error",
                        code="invalid_api_key",
                    ),
                    status_code=401,
                )
            request.scope[OWNER_KEY] = hashlib.sha256(matched[0]).hexdigest()[:32]
        if request.method in ("POST", "PUT", "PATCH"):
            length = request.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > config.max_body_bytes:
                return JSONResponse(
                    errors.error_body(
                        f"the request body is {int(length)} bytes; the limit is {config.max_body_bytes}",
                        "invalid_request_error",
                        code="body_too_large",
                    ),
                    status_code=413,
                )
        return await call_next(request)

    @app.get("/health")
    async def health():
        if state.engine.error is not None:  # a tensor parallel rank is gone: say which, and that we are down
            return JSONResponse(
                {"status": "error", "error": state.engine.error, "model": config.model_name}, status_code=503
            )
        return {
            "status": "ok",
            "model": config.model_name,
            "synthetic": state.llm.is_synthetic,
            "running": state.engine.stats.running,
            "waiting": state.engine.pending,
        }

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        from openai.types import Model

        names = [config.model_name] + config.aliases
        data = [Model(id=n, created=state.started, object="model", owned_by="gptoss").model_dump() for n in names]
        data += [
            Model(id=n, created=state.started, object="model", owned_by="gptoss", parent=config.model_name).model_dump()
            for n in config.adapters
        ]  # LoRA adapters: "parent" names their base, as vLLM lists them
        return {"object": "list", "data": data}

    chat_completions.register(app, state)
    completions.register(app, state)
    responses.register(app, state)
    moderations.register(app, state)

    return app
