"""The explorer: a local web app to look at any prompt through SAEs (Kissane et al. 2024's prompt
explorer and Neuronpedia-style feature pages, offline, over any model and SAEs saelab loads).

    saelab explore --model toy --sae runs/saes/attn_L3 --sae runs/saes/attn_L2
    saelab explore --model toy --graph runs/graphs/ioi          # attribution graphs, at /graph

    service = ExplorerService.open("toy", ["runs/saes/attn_L3"])   # model and SAEs loaded once
    app = create_app(service)                                       # FastAPI; uvicorn.run(app, ...)

Pieces: ``service`` (the computations, through saelab.interp / saelab.attention / saelab.splicing),
``graphs`` (attribution graphs of ``saelab graph``: served, and intervened on through saelab.graphs),
``schemas`` (pydantic bodies, the OpenAPI document), ``app`` (routes, limits, errors), ``errors``
(unknown names, limits), ``static/`` (the pages, no CDN), ``commands`` (``saelab explore``),
``demo_stage`` (the demo's walk-through).
"""

from saelab.explorer.errors import RequestLimitError, UnknownGraphError, UnknownSAEError
from saelab.explorer.service import ExplorerLimits, ExplorerSAE, ExplorerService


def create_app(service: ExplorerService):
    """The FastAPI app over ``service`` (imported lazily: fastapi is only needed to serve)."""
    from saelab.explorer.app import create_app as build

    return build(service)


__all__ = ["ExplorerLimits", "ExplorerSAE", "ExplorerService", "RequestLimitError", "UnknownGraphError",
           "UnknownSAEError", "create_app"]
