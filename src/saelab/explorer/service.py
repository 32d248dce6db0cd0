"""The explorer's computations: a model and its SAEs loaded once, answering prompt-level questions.

    service = ExplorerService.open("toy", ["runs/saes/attn_L3", "runs/saes/attn_L2"])
    service.tokens("When Mary and John ...", "attn_L3", k=5)     # latents per token
    service.latent("attn_L3", 17)                               # dashboard (file or on demand)
    service.dfa(prompt, "attn_L3", 17, position=-1)            # by head and by source token
    service.recurse(prompt, "attn_L3", 17, dest=-1, src=4, upstream="attn_L2")
    service.compare(prompt, "attn_L3", latent=17, steer=4.0)    # clean / spliced / ablated / steered
    service.graphs.intervene("ioi", ["feature:3:14:101"], "ablate")   # attribution graphs (explorer.graphs)

Every answer is a JSON-able dict shaped like the matching response in ``saelab.explorer.schemas``.
Concurrency: forward passes hook the shared model's modules, so they run one at a time under
``model_lock``; reading the loaded SAEs, precomputed dashboards and weight-only maths takes no lock.
On-demand dashboards are computed over a bounded token budget and kept in a small LRU cache.
"""

from __future__ import annotations

import json
import math
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from saelab.attention.dfa import direct_feature_attribution
from saelab.attention.geometry import AttentionSAE, bind_attention_sae
from saelab.attention.recursive import bind_upstream, recursive_dfa
from saelab.causal.edits import steer as steer_latent
from saelab.causal.edits import zero_ablate
from saelab.errors import ConfigError, CorruptFileError, SaelabError, check_range
from saelab.explorer.errors import RequestLimitError, UnknownSAEError
from saelab.explorer.graphs import GraphStore, distinct_folders, read_explorer_graph
from saelab.interp.logits import RESIDUAL_KINDS, head_shares
from saelab.interp.site import encode_windows
from saelab.interp.tokens import TokenNames
from saelab.models import LoadedModel, parse_hook_name
from saelab.models.hook_points import ATTN_Z
from saelab.sae import SAE
from saelab.splicing import Splice, check_sae_fits, ordinary_token_mask, splice_edits


@dataclass
class ExplorerLimits:
    """Bounds on what one request may cost (validated at construction)."""

    max_prompt_chars: int = 2000
    max_prompt_tokens: int = 256       # also capped by the model's context length
    max_top_k: int = 50
    max_steer: float = 1000.0
    dashboard_tokens: int = 8192       # token budget of an on-demand dashboard
    dashboard_context: int = 64        # window length of its examples
    dashboard_cache: int = 128         # on-demand dashboards kept (LRU)
    max_body_bytes: int = 64 * 1024    # request bodies larger than this get 413
    max_graph_edges: int = 5000        # edges of a graph sent at most (its strongest)
    max_intervention_nodes: int = 32   # feature nodes ablated or steered at once
    max_scale: float = 100.0           # |factor| on steered features' activations
    graph_cache: int = 2               # rebuilt replacement models and full graphs kept (LRU)

    def __post_init__(self) -> None:
        check_range("max_prompt_chars", self.max_prompt_chars, 1, 20_000, integer=True)
        check_range("max_prompt_tokens", self.max_prompt_tokens, 2, None, integer=True)
        check_range("max_top_k", self.max_top_k, 1, 50, integer=True)
        check_range("max_steer", self.max_steer, 0, 1000.0)
        check_range("dashboard_tokens", self.dashboard_tokens, 64, 10_000_000, integer=True)
        check_range("dashboard_context", self.dashboard_context, 8, 4096, integer=True)
        check_range("dashboard_cache", self.dashboard_cache, 0, None, integer=True)
        check_range("max_body_bytes", self.max_body_bytes, 1024, None, integer=True)
        check_range("max_graph_edges", self.max_graph_edges, 1, 1_000_000, integer=True)
        check_range("max_intervention_nodes", self.max_intervention_nodes, 1, 256, integer=True)
        check_range("max_scale", self.max_scale, 0, 1000.0)
        check_range("graph_cache", self.graph_cache, 1, None, integer=True)


@dataclass
class ExplorerSAE:
    """One loaded SAE: its name in the API, the hook it reads (``hook``; per-token latents come from
    there) and the hook it writes (``hook_out``: a transcoder's target, else ``hook``), what kind of
    site it reads, its attention binding (hook_z SAEs), precomputed dashboard records by latent index and
    the folder it was loaded from (None when given as an object)."""

    name: str
    sae: SAE
    hook: str
    kind: str                                   # "attention" | "residual" | "other"
    layer: int | None
    hook_out: str = ""
    attention: AttentionSAE | None = None
    dashboard: dict[int, dict] = field(default_factory=dict)
    upstream: list[str] = field(default_factory=list)
    folder: str | None = None

    @property
    def d_sae(self) -> int:
        return self.sae.cfg.d_sae


def site_kind(lm: LoadedModel, hook: str) -> tuple[str, int | None]:
    point = parse_hook_name(hook, lm.n_layers, lm.name)
    if point.kind == ATTN_Z:
        return "attention", point.layer
    return ("residual" if point.kind in RESIDUAL_KINDS else "other"), point.layer


def finite(x: float) -> float:
    """A float JSON can carry (NaN and infinities would make the response unserialisable)."""
    x = float(x)
    if math.isnan(x):
        return 0.0
    return max(min(x, 1e30), -1e30)


def sae_name_and_path(spec: str) -> tuple[str | None, str]:
    """``NAME=PATH`` -> (NAME, PATH); a bare ``PATH`` -> (None, PATH)."""
    name, sep, path = spec.partition("=")
    if sep and name and "/" not in name and "\\" not in name:
        return name, path
    return None, spec


def read_dashboard_file(path: str | Path) -> dict[str, Any]:
    """A ``feature_data.json`` written by ``saelab.interp.write_dashboard`` (plain JSON)."""
    path = Path(path)
    if path.is_dir():
        path = path / "feature_data.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"dashboard file {str(path)!r} does not exist; give a feature_data.json written by "
                          "`saelab dashboard` (or its folder)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"dashboard file {str(path)!r} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("features"), list) or not isinstance(data.get("meta"), dict):
        raise CorruptFileError(f"dashboard file {str(path)!r} has no 'meta' and 'features'; expected the "
                               "feature_data.json of `saelab dashboard`")
    return data


def _example(ex: dict) -> dict:
    return {"tokens": [str(t) for t in ex["tokens"]], "acts": [finite(a) for a in ex["acts"]],
            "mark": int(ex["mark"]), "act": finite(ex["act"])}


def dashboard_view(record: dict, sae_name: str, source: str, n_tokens: int) -> dict:
    """A ``FeatureRecord`` as a dict (``dataclasses.asdict``, or read from feature_data.json) -> the
    ``LatentResponse`` shape."""
    logits = record.get("logits") or {}
    hist = record.get("hist")
    near = record.get("neighbors_cosine") or []
    return {
        "sae": sae_name, "latent": int(record["index"]), "source": source, "n_tokens": int(n_tokens),
        "density": finite(record["density"]), "max_act": finite(record["max_act"]),
        "mean_act": finite(record["mean_act"]),
        "hist": {"edges": [finite(e) for e in hist["edges"]], "counts": [finite(c) for c in hist["counts"]]}
        if hist and hist.get("edges") else None,
        "top_examples": [_example(e) for e in record.get("top_examples", [])],
        "quantile_groups": [{"label": str(g.get("label", "")), "examples": [_example(e) for e in g["examples"]]}
                            for g in record.get("quantile_groups", []) if g.get("examples")],
        "top_logits": [{"token": str(t), "weight": finite(w)} for t, w in logits.get("top", [])],
        "bottom_logits": [{"token": str(t), "weight": finite(w)} for t, w in logits.get("bottom", [])],
        "head_shares": [finite(s) for s in record["head_shares"]] if record.get("head_shares") else None,
        "neighbors": [{"latent": int(i), "activation": finite(c)} for i, c in near],
    }


class ExplorerService:
    """The model, its SAEs (by name), its attribution graphs (``graphs``, a ``GraphStore``) and the
    computations behind each API endpoint. ``folders``: the folder each SAE was loaded from (by name), so
    that a graph's transcoders are matched to the SAEs with their dashboards and not loaded twice."""

    def __init__(self, lm: LoadedModel, saes: dict[str, SAE], limits: ExplorerLimits | None = None,
                 dashboards: dict[str, str | Path] | None = None, source: str = "toy:1",
                 folders: dict[str, str | Path] | None = None):
        if not saes:
            raise ConfigError("the explorer needs at least one SAE (--sae DIR, or --graph files whose transcoder "
                              "folders exist)")
        self.lm, self.limits, self.source_spec = lm, limits or ExplorerLimits(), source
        self.names = TokenNames(lm)
        self.model_lock = threading.Lock()
        self.cache_lock = threading.Lock()
        self.dashboard_cache: OrderedDict[tuple[str, int], dict] = OrderedDict()
        context = getattr(getattr(lm.model, "config", None), "max_position_embeddings", None)
        self.max_tokens = min(self.limits.max_prompt_tokens, int(context) if context else 1 << 30)
        self.saes: dict[str, ExplorerSAE] = {}
        for name, sae in saes.items():
            hook, hook_out = check_sae_fits(lm, sae)
            kind, layer = site_kind(lm, hook)
            folder = (folders or {}).get(name)
            entry = ExplorerSAE(name, sae, hook, kind, layer, hook_out=hook_out,
                                folder=None if folder is None else str(folder))
            if kind == "attention":
                entry.attention = bind_attention_sae(lm, sae)
            self.saes[name] = entry
        for entry in self.saes.values():
            if entry.attention is not None:
                entry.upstream = [other.name for other in self.saes.values() if self._feeds(entry, other)]
        for name, path in (dashboards or {}).items():
            self.attach_dashboard(name, read_dashboard_file(path))
        self.graphs = GraphStore(lm, self.model_lock, self.limits, self.names, self.saes)

    @classmethod
    def open(cls, model: str, sae_specs: list[str], dashboards: list[str] | None = None,
             limits: ExplorerLimits | None = None, source: str = "toy:1", device: str = "cpu",
             dtype: str = "float32", graphs: list[str] | None = None,
             graph_transcoders: list[str] | None = None) -> ExplorerService:
        """Load ``model`` and the SAE folders (``DIR`` or ``NAME=DIR``); ``dashboards`` are
        feature_data.json files (``PATH`` or ``NAME=PATH``) matched to SAEs by name or by hook and width.
        ``graphs``: graph.json files of ``saelab graph`` or their folders (``PATH`` or ``NAME=PATH``), whose
        interventions use ``graph_transcoders`` (default: the folders each file records). Without SAEs, the
        graphs' transcoders are the explorer's SAEs (their dashboards are then a click away in the graph view)."""
        from saelab.models import load_model
        from saelab.sae import load_sae

        read = [read_explorer_graph(*sae_name_and_path(spec), transcoders=graph_transcoders)
                for spec in graphs or []]
        if not sae_specs:
            sae_specs = [f"{folder.name}={folder}" for folder in distinct_folders(read)]
        lm = load_model(model, device=device, dtype=dtype)
        saes: dict[str, SAE] = {}
        folders: dict[str, str] = {}
        for spec in sae_specs:
            name, path = sae_name_and_path(spec)
            name = name or Path(path).name or path
            if name in saes:
                raise ConfigError(f"two SAEs are named {name!r}; name them with --sae NAME=DIR")
            saes[name] = load_sae(path, device=device)
            folders[name] = path
        service = cls(lm, saes, limits, source=source, folders=folders)
        for spec in dashboards or []:
            name, path = sae_name_and_path(spec)
            data = read_dashboard_file(path)
            service.attach_dashboard(name or service._match_dashboard(data, path), data)
        for graph in read:
            service.graphs.attach(graph)
        return service

    # ------------------------------------------------------------------------------------- setup
    def _feeds(self, target: ExplorerSAE, other: ExplorerSAE) -> bool:
        if other is target:
            return False
        try:
            bind_upstream(target.attention, other.sae)
        except SaelabError:
            return False
        return True

    def _match_dashboard(self, data: dict, path: str) -> str:
        meta = data["meta"]
        hits = [e.name for e in self.saes.values() if e.hook == meta.get("hook") and e.d_sae == meta.get("d_sae")]
        if len(hits) != 1:
            found = "no SAE" if not hits else f"SAEs {', '.join(hits)}"
            raise ConfigError(f"dashboard {path!r} (hook {meta.get('hook')!r}, d_sae {meta.get('d_sae')}) matches "
                              f"{found}; name its SAE: --dashboard NAME={path}")
        return hits[0]

    def attach_dashboard(self, name: str, data: dict) -> None:
        """Use precomputed feature records ``data`` (feature_data.json) for SAE ``name``."""
        entry = self.entry(name)
        meta = data["meta"]
        if meta.get("d_sae") not in (None, entry.d_sae) or meta.get("hook") not in (None, entry.hook):
            raise ConfigError(f"dashboard for hook {meta.get('hook')!r} with d_sae {meta.get('d_sae')} does not fit "
                              f"SAE {name!r} ({entry.hook}, d_sae {entry.d_sae})")
        n_tokens = int(meta.get("n_tokens", 0))
        for record in data["features"]:
            index = int(record["index"])
            if 0 <= index < entry.d_sae:
                entry.dashboard[index] = {"record": record, "n_tokens": n_tokens}

    # ----------------------------------------------------------------------------------- checks
    def entry(self, name: str) -> ExplorerSAE:
        if name not in self.saes:
            raise UnknownSAEError(f"unknown SAE {name!r}; this server loaded: {', '.join(self.saes)}")
        return self.saes[name]

    def attention_entry(self, name: str) -> ExplorerSAE:
        entry = self.entry(name)
        if entry.attention is None:
            raise SaelabError(f"SAE {name!r} reads {entry.hook}; DFA needs an attention-output SAE "
                              f"(blocks.L.{ATTN_Z}); loaded attention SAEs: "
                              f"{', '.join(e.name for e in self.saes.values() if e.attention) or 'none'}")
        return entry

    def check_latent(self, entry: ExplorerSAE, latent: int) -> int:
        if not 0 <= latent < entry.d_sae:
            raise SaelabError(f"latent={latent} is out of range; SAE {entry.name!r} has latents 0..{entry.d_sae - 1}")
        return latent

    def check_k(self, k: int) -> int:
        if k > self.limits.max_top_k:
            raise RequestLimitError(f"k={k} is above this server's limit; accepted: 1..{self.limits.max_top_k}")
        return k

    def prompt_ids(self, prompt: str) -> torch.Tensor:
        """``[1, pos]`` token ids of ``prompt`` (BOS first), refusing prompts over the limits."""
        lim = self.limits
        if len(prompt) > lim.max_prompt_chars:
            raise RequestLimitError(f"the prompt has {len(prompt)} characters; this server accepts at most "
                                    f"{lim.max_prompt_chars}")
        if not prompt.strip():
            raise SaelabError("the prompt is empty; type some text")
        ids, _ = self.lm.tokenize(prompt)
        if ids.shape[1] > self.max_tokens:
            raise RequestLimitError(f"the prompt has {ids.shape[1]} tokens (with BOS); this server accepts at most "
                                    f"{self.max_tokens}")
        return ids

    def position(self, position: int, n_pos: int, what: str = "position") -> int:
        if not -n_pos <= position < n_pos:
            raise SaelabError(f"{what}={position} is out of range; the prompt has {n_pos} tokens "
                              f"(accepted: {-n_pos}..{n_pos - 1})")
        return position % n_pos

    # ---------------------------------------------------------------------------------- answers
    def info(self) -> dict:
        lm, lim = self.lm, self.limits
        return {
            "model": lm.name, "n_layers": lm.n_layers, "d_model": lm.d_model, "n_heads": lm.n_heads,
            "d_vocab": lm.d_vocab,
            "saes": [{"name": e.name, "hook": e.hook, "hook_out": e.hook_out or e.hook, "kind": e.kind, "layer": e.layer,
                      "architecture": e.sae.cfg.architecture, "d_in": e.sae.cfg.d_in, "d_sae": e.d_sae,
                      "dashboard_features": len(e.dashboard), "upstream": e.upstream} for e in self.saes.values()],
            "limits": {"max_prompt_chars": lim.max_prompt_chars, "max_prompt_tokens": self.max_tokens,
                       "max_top_k": lim.max_top_k, "max_steer": lim.max_steer,
                       "dashboard_tokens": lim.dashboard_tokens, "max_body_bytes": lim.max_body_bytes},
            "example_prompts": self.example_prompts(),
            "graphs": self.graphs.names(),
        }

    def example_prompts(self) -> list[str]:
        if self.lm.name != "toy":
            return ["The cat sat on the mat because the cat was tired"]
        from saelab.toy.tasks import generate_pairs

        span = "target waters strict reset 38 Kevin at crop"
        return [generate_pairs("ioi", 1, 0)[0].clean.text, f"The singer plays a song . {span} {span}",
                generate_pairs("greater_than", 1, 0)[0].clean.text]

    @torch.no_grad()
    def tokens(self, prompt: str, sae: str, k: int = 5) -> dict:
        """Each token of ``prompt`` with its ``k`` most active latents (none at special tokens)."""
        entry, k = self.entry(sae), self.check_k(k)
        ids = self.prompt_ids(prompt)
        with self.model_lock:
            acts = encode_windows(self.lm, entry.sae, entry.hook, ids)[0]        # [pos, d_sae]
        values, indices = acts.topk(min(k, entry.d_sae), dim=-1)
        special = set(self.lm.special_token_ids)
        rows = []
        for pos, token_id in enumerate(ids[0].tolist()):
            keep = values[pos] > 0
            rows.append({"position": pos, "token": self.names.name(token_id), "special": token_id in special,
                         "latents": [{"latent": int(i), "activation": finite(v)}
                                     for i, v in zip(indices[pos][keep], values[pos][keep], strict=True)]})
        peak = acts.max(0).values                                                  # [d_sae]
        top_v, top_i = peak.topk(min(k, entry.d_sae))
        return {"sae": sae, "tokens": rows, "max_activation": finite(acts.max()) if acts.numel() else 0.0,
                "prompt_top": [{"latent": int(i), "activation": finite(v)}
                               for i, v in zip(top_i, top_v, strict=True) if v > 0]}

    def latent(self, sae: str, latent: int) -> dict:
        """The latent's dashboard: the precomputed record when there is one, else computed over
        ``limits.dashboard_tokens`` tokens of the server's source (cached)."""
        entry = self.entry(sae)
        self.check_latent(entry, latent)
        if latent in entry.dashboard:
            stored = entry.dashboard[latent]
            return dashboard_view(stored["record"], sae, "precomputed", stored["n_tokens"])
        key = (sae, latent)
        with self.cache_lock:
            if key in self.dashboard_cache:
                self.dashboard_cache.move_to_end(key)
                return self.dashboard_cache[key]
        view = self._compute_dashboard(entry, latent)
        if self.limits.dashboard_cache:
            with self.cache_lock:
                self.dashboard_cache[key] = view
                while len(self.dashboard_cache) > self.limits.dashboard_cache:
                    self.dashboard_cache.popitem(last=False)
        return view

    def _compute_dashboard(self, entry: ExplorerSAE, latent: int) -> dict:
        from saelab.data.sources import open_source
        from saelab.interp import FeatureDataConfig, build_feature_data

        lim = self.limits
        cfg = FeatureDataConfig(n_tokens=lim.dashboard_tokens, context_size=lim.dashboard_context, n_top=10,
                                n_quantiles=5, per_quantile=3, progress=False, model_batch_size=16)
        with self.model_lock:
            data = build_feature_data(self.lm, entry.sae, entry.hook, open_source(self.source_spec), [latent], cfg)
        return dashboard_view(asdict(data.features[0]), entry.name, "computed", data.meta["n_tokens"])

    def dfa(self, prompt: str, sae: str, latent: int, position: int = -1, k: int = 10) -> dict:
        """Direct feature attribution of ``latent`` at ``position``, by head and by source token."""
        entry, k = self.attention_entry(sae), self.check_k(k)
        self.check_latent(entry, latent)
        ids = self.prompt_ids(prompt)[0]
        dest = self.position(position, ids.shape[0])
        with self.model_lock:
            result = direct_feature_attribution(entry.attention, ids.tolist(), latent, dest)
        tokens = self.names.names(ids.tolist())
        by_source = result.by_source[:, :dest + 1]                                 # [n_heads, src]
        total = by_source.sum(0)
        order = torch.argsort(total.abs(), descending=True)[:k]
        shares = head_shares(self.lm, entry.sae, entry.hook, [latent])
        shares = [] if shares is None else shares[0]      # a transcoder from hook_z writes elsewhere
        return {
            "sae": sae, "latent": latent, "position": dest, "tokens": tokens,
            "activation": finite(result.activation), "preactivation": finite(result.preactivation),
            "bias": finite(result.bias + result.b_dec_term),
            "by_head": [finite(v) for v in result.by_head],
            "by_source": [[finite(v) for v in row] for row in by_source],
            "by_source_total": [finite(v) for v in total],
            "top_sources": [{"src": int(s), "token": tokens[int(s)], "dfa": finite(total[s]),
                             "by_head": [finite(v) for v in by_source[:, s]]} for s in order],
            "head_shares": [finite(v) for v in shares], "upstream": entry.upstream,
        }

    def recurse(self, prompt: str, sae: str, latent: int, dest: int, src: int, upstream: str, k: int = 10) -> dict:
        """The upstream SAE's latents that drive the ``(dest, src)`` term of ``latent``'s DFA."""
        entry, k = self.attention_entry(sae), self.check_k(k)
        self.check_latent(entry, latent)
        up = self.entry(upstream)
        if upstream not in entry.upstream:
            raise SaelabError(f"SAE {upstream!r} ({up.hook}) cannot feed {sae!r} ({entry.hook}); upstream SAEs "
                              f"loaded for it: {', '.join(entry.upstream) or 'none'}")
        ids = self.prompt_ids(prompt)[0]
        n_pos = ids.shape[0]
        dest = self.position(dest, n_pos, "dest")
        src = self.position(src, n_pos, "src")
        if src > dest:
            raise SaelabError(f"src={src} comes after dest={dest}; attention only reads earlier positions "
                              f"(accepted: 0..{dest})")
        with self.model_lock:
            result = recursive_dfa(entry.attention, up.sae, ids.tolist(), latent, dest, src)
        tokens = self.names.names(ids.tolist())
        order = torch.argsort(result.scores.abs(), descending=True)[:k]
        return {
            "sae": sae, "latent": latent, "dest": dest, "src": src, "dest_token": tokens[dest],
            "src_token": tokens[src], "upstream": upstream, "upstream_kind": up.kind,
            "exact_split": result.exact, "approximation": result.approximation,
            "source_term": finite(result.source_term), "value_bias_term": finite(result.value_bias_term),
            "error_term": None if result.error_term is None else finite(result.error_term),
            "b_dec_term": None if result.b_dec_term is None else finite(result.b_dec_term),
            "top_upstream_latents": [{"latent": int(g), "score": finite(result.scores[g]),
                                      "activation": finite(result.upstream_acts[g])}
                                     for g in order if result.scores[g] != 0],
        }

    @torch.no_grad()
    def compare(self, prompt: str, sae: str, latent: int | None = None, steer: float = 4.0, position: int = -1,
                k: int = 8) -> dict:
        """Next-token predictions at ``position``: clean, with the SAE spliced in, and (given a latent)
        with the latent ablated or steered (its activation + ``steer``) at every ordinary token, the
        SAE's error term kept in both so that only the latent changes."""
        entry, k = self.entry(sae), self.check_k(k)
        if latent is not None:
            self.check_latent(entry, latent)
        if abs(steer) > self.limits.max_steer:
            raise RequestLimitError(f"steer={steer} is above this server's limit; accepted: "
                                    f"-{self.limits.max_steer}..{self.limits.max_steer}")
        ids = self.prompt_ids(prompt)
        pos = self.position(position, ids.shape[1])
        mask = ordinary_token_mask(ids, self.lm.special_token_ids)
        what = (f"{entry.hook} replaced by the SAE's reconstruction" if entry.hook_out == entry.hook else
                f"{entry.hook_out} replaced by the transcoder's prediction from {entry.hook}")
        runs = [("clean", "the model as it is", None), ("spliced", what, Splice(entry.sae, positions=mask))]
        if latent is not None:
            for name, description, edit in (("ablated", "set to 0", zero_ablate(latent)),
                                             ("steered", f"activation {steer:+g}", steer_latent(latent, steer))):
                runs.append((name, f"latent {latent} {description} (error term kept)",
                             Splice(entry.sae, add_error=True, edits=[edit], positions=mask)))
        logits = {}
        with self.model_lock:
            for name, _, splice in runs:
                edits = {} if splice is None else splice_edits(self.lm, [splice])
                logits[name] = self.lm.run_with_hooks(ids, edits)[0, pos].float()
        clean_logp = torch.log_softmax(logits["clean"], -1)
        clean_top = int(clean_logp.argmax())
        variants = []
        for name, description, _ in runs:
            logp = torch.log_softmax(logits[name], -1)
            kl = float((clean_logp.exp() * (clean_logp - logp)).sum())
            probs = logp.exp()
            top_p, top_i = probs.topk(min(k, probs.shape[0]))
            variants.append({"name": name, "description": description, "kl_from_clean": finite(max(kl, 0.0)),
                             "clean_top_prob": finite(probs[clean_top]),
                             "top": [{"token": self.names.name(int(i)), "token_id": int(i), "prob": finite(p),
                                      "logit": finite(logits[name][i])} for p, i in zip(top_p, top_i, strict=True)]})
        return {"sae": sae, "latent": latent, "position": pos, "token": self.names.name(int(ids[0, pos])),
                "variants": variants}

