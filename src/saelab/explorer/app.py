"""The explorer as an ASGI app (FastAPI): the page, its assets, and the JSON API.

    app = create_app(ExplorerService.open("toy", ["runs/saes/attn_L3"]))
    uvicorn.run(app, host="127.0.0.1", port=8000)

Routes: ``GET /`` (the page), ``GET /assets/{name}`` (its scripts and styles, from a fixed list: no
request names a file path), ``GET /api/info``, ``POST /api/tokens | latent | dfa | recurse | compare``,
``GET /api/openapi.json``. No docs page (it would load scripts from a CDN). When the service has
attribution graphs (``saelab explore --graph``), also ``GET /graph`` (the graph view), ``GET /api/graphs``,
``POST /api/graph`` and ``POST /api/graph/intervene``; without graphs these routes do not exist.

Errors: a malformed or invalid body gets 422 with ``detail`` (pydantic's list) and ``message`` (one
readable line); a request the service refuses gets 400 (404 for an unknown SAE or graph) with
``detail``; a body over ``limits.max_body_bytes`` gets 413; anything unexpected gets 500 with a short
message and no traceback (the traceback goes to the server log).
"""

from __future__ import annotations

import json
import logging
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from saelab import __version__
from saelab.errors import SaelabError
from saelab.explorer import schemas as S
from saelab.explorer.errors import UnknownGraphError, UnknownSAEError
from saelab.explorer.service import ExplorerService

log = logging.getLogger("saelab.explorer")

ASSETS = {"explorer.js": "text/javascript; charset=utf-8", "explorer.css": "text/css; charset=utf-8",
          "graph.js": "text/javascript; charset=utf-8", "graph.css": "text/css; charset=utf-8"}
ERRORS = {400: {"model": S.ErrorResponse, "description": "refused: the message says why"},
          404: {"model": S.ErrorResponse, "description": "unknown SAE"},
          413: {"model": S.ErrorResponse, "description": "request body too large"}}
GRAPH_ERRORS = {**ERRORS, 404: {"model": S.ErrorResponse, "description": "unknown graph"}}


def asset_text(name: str) -> str:
    return resources.files("saelab.explorer").joinpath("static", name).read_text(encoding="utf-8")


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` with 413 (declared or streamed)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(send)
            return
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message]), send)
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await self._refuse(send)
                return
        await self.app(scope, _replay([{"type": "http.request", "body": bytes(body), "more_body": False}], receive),
                       send)

    async def _refuse(self, send) -> None:
        payload = json.dumps({"detail": f"request body over {self.max_bytes} bytes; this server accepts at most "
                                        f"{self.max_bytes}"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})


def _replay(messages: list[dict], then=None):
    async def receive():
        if messages:
            return messages.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive


def _validation_message(errors: list[dict]) -> str:
    parts = []
    for err in errors:
        if err.get("type") == "json_invalid":
            parts.append(f"the body is not valid JSON ({err.get('ctx', {}).get('error', 'decode error')} at "
                         f"character {err.get('loc', ('body', 0))[-1]})")
            continue
        where = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        got = err.get("input")
        shown = "" if isinstance(got, dict) or got is None else f" (got {json.dumps(got, default=str)[:80]})"
        parts.append(f"{where}: {err.get('msg', 'invalid')}{shown}")
    return "; ".join(parts)


def create_app(service: ExplorerService) -> FastAPI:
    """The FastAPI app over one loaded ``service``."""
    app = FastAPI(title="saelab explorer", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url="/api/openapi.json",
                  description="Look at any prompt through SAEs: latents per token, dashboards, DFA, recursion, "
                              "splicing/ablation/steering.")
    app.add_middleware(BodyLimit, max_bytes=service.limits.max_body_bytes)
    app.state.service = service

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
                  for e in exc.errors()]
        return JSONResponse({"detail": errors, "message": _validation_message(list(exc.errors()))}, status_code=422)

    @app.exception_handler(SaelabError)
    async def refused(request: Request, exc: SaelabError) -> JSONResponse:
        code = 404 if isinstance(exc, (UnknownSAEError, UnknownGraphError)) else 400
        return JSONResponse({"detail": str(exc)}, status_code=code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("explorer: %s %s failed", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server log"}, status_code=500)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(asset_text("index.html"))

    @app.get("/assets/{name}", include_in_schema=False)
    def asset(name: str) -> Response:
        if name not in ASSETS:
            return JSONResponse({"detail": f"no asset {name[:100]!r}; assets: {', '.join(ASSETS)}"}, status_code=404)
        return Response(asset_text(name), media_type=ASSETS[name], headers={"cache-control": "no-cache"})

    @app.get("/api/info", response_model=S.InfoResponse)
    def info() -> dict:
        return service.info()

    @app.post("/api/tokens", response_model=S.TokensResponse, responses=ERRORS)
    async def tokens(body: S.TokensRequest) -> dict:
        return await run_in_threadpool(service.tokens, body.prompt, body.sae, body.k)

    @app.post("/api/latent", response_model=S.LatentResponse, responses=ERRORS)
    async def latent(body: S.LatentRequest) -> dict:
        return await run_in_threadpool(service.latent, body.sae, body.latent)

    @app.post("/api/dfa", response_model=S.DFAResponse, responses=ERRORS)
    async def dfa(body: S.DFARequest) -> dict:
        return await run_in_threadpool(service.dfa, body.prompt, body.sae, body.latent, body.position, body.k)

    @app.post("/api/recurse", response_model=S.RecurseResponse, responses=ERRORS)
    async def recurse(body: S.RecurseRequest) -> dict:
        return await run_in_threadpool(service.recurse, body.prompt, body.sae, body.latent, body.dest, body.src,
                                       body.upstream, body.k)

    @app.post("/api/compare", response_model=S.CompareResponse, responses=ERRORS)
    async def compare(body: S.CompareRequest) -> dict:
        return await run_in_threadpool(service.compare, body.prompt, body.sae, body.latent, body.steer,
                                       body.position, body.k)

    if service.graphs.names():
        add_graph_routes(app, service)

    def openapi() -> dict:
        if app.openapi_schema is None:
            saes = list(service.saes)
            app.openapi_schema = with_names(get_openapi(title=app.title, version=app.version,
                                                        description=app.description, routes=app.routes),
                                            {"sae": saes, "upstream": saes, "graph": service.graphs.names()})
        return app.openapi_schema

    app.openapi = openapi
    return app


def add_graph_routes(app: FastAPI, service: ExplorerService) -> None:
    """The graph view and its API (see the module docstring)."""
    graphs = service.graphs

    @app.get("/graph", response_class=HTMLResponse, include_in_schema=False)
    def graph_page() -> HTMLResponse:
        return HTMLResponse(asset_text("graph.html"))

    @app.get("/api/graphs", response_model=S.GraphListResponse)
    def graph_list() -> dict:
        return graphs.listing()

    @app.post("/api/graph", response_model=S.GraphResponse, responses=GRAPH_ERRORS)
    def graph(body: S.GraphRequest) -> dict:
        return graphs.view(body.graph, body.max_edges)

    @app.post("/api/graph/intervene", response_model=S.InterventionResponse, responses=GRAPH_ERRORS)
    async def graph_intervene(body: S.InterventionRequest) -> dict:
        return await run_in_threadpool(graphs.intervene, body.graph, body.nodes, body.mode, body.scale, body.k)


def with_names(schema: dict, names: dict[str, list[str]]) -> dict:
    """The OpenAPI document with the name fields of requests (``sae``, ``upstream``, ``graph``) listing the
    names this server loaded (an enum), so clients and fuzzers know the accepted names."""
    for component in schema.get("components", {}).get("schemas", {}).values():
        if not component.get("title", "").endswith("Request"):
            continue
        for field_name, accepted in names.items():
            if field_name in component.get("properties", {}):
                component["properties"][field_name]["enum"] = accepted
    return schema

