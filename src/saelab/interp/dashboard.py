"""Self-contained HTML dashboards: one file, all scripts, styles and data inline, no network.

``write_dashboard(data, out_dir)`` writes ``out_dir/dashboard.html`` (and ``feature_data.json``). The page
has an index (search by index or token, sort by density or max activation, rows rendered 200 at a time)
and a page per feature rendered only when opened (``#feature-N``): activation histogram, logit tables
and histogram, top examples and quantile groups with tokens shaded by activation (hover shows the
value), nearest latents by decoder cosine and by activation correlation, and per-head shares for hook_z
SAEs. The data is embedded as JSON in a ``<script type="application/json">`` element.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from pathlib import Path
from typing import Any

from saelab.fileio import atomic_write_bytes, atomic_write_json
from saelab.interp.gather import FeatureData

DASHBOARD_FILENAME = "dashboard.html"
DATA_FILENAME = "feature_data.json"


def _asset(name: str) -> str:
    return resources.files("saelab.interp").joinpath(name).read_text(encoding="utf-8")


def embed_json(obj: Any) -> str:
    """JSON safe inside a ``<script>`` element (no ``</script>`` or ``<!--`` can end it early)."""
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_dashboard(data: FeatureData, title: str | None = None) -> str:
    """The dashboard page as one HTML string."""
    meta = data.meta
    title = title or f"saelab features · {meta.get('hook', '')} · {meta.get('model', '')}"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{html.escape(title)}</title>"
        f"<style>{_asset('dashboard.css')}</style></head><body>"
        f"<header><h1>{html.escape(title)}</h1><p id=\"summary\"></p></header>"
        "<main><section id=\"index-view\"></section><section id=\"feature-view\" hidden></section></main>"
        f"<script id=\"saelab-data\" type=\"application/json\">{embed_json(data.to_dict())}</script>"
        f"<script>{_asset('dashboard.js')}</script></body></html>\n")


def write_dashboard(data: FeatureData, out_dir: str | Path, title: str | None = None) -> dict[str, Path]:
    """Write ``dashboard.html`` and ``feature_data.json`` under ``out_dir`` (atomically); return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    page, raw = out / DASHBOARD_FILENAME, out / DATA_FILENAME
    atomic_write_bytes(page, render_dashboard(data, title).encode("utf-8"))
    atomic_write_json(raw, data.to_dict())
    return {"dashboard": page, "data": raw}
