"""Direct feature attribution (DFA) of an attention-output SAE latent, by head and by source position.

For latent ``f`` with linear encoder ``pre_f(z) = Σ_k z_k · w_{f,k} + c_f`` (``saelab.attention.geometry``):

- by head: the terms ``z_k · w_{f,k}`` ``[n_heads]`` plus the bias terms add up to ``pre_f``;
- by source position: ``z[dest, h] = Σ_src pattern[h, dest, src] · v[src, h]``, so
  ``DFA[h, dest, src] = pattern[h, dest, src] · (v[src, h] · w_{f,h})`` and
  ``Σ_{h, src} DFA + c_f = pre_f`` at ``dest``. Under grouped-query attention ``v`` has
  ``n_kv_heads`` heads; query head ``h`` reads value head ``h // (n_heads / n_kv_heads)``.

The decomposition by source is exact whenever the model's ``hook_z`` is ``pattern @ v`` per head
(true of every supported family in eval mode: attention dropout is off).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from saelab.attention.geometry import AttentionSAE
from saelab.errors import SaelabError
from saelab.models.adapters.base import expand_kv

Z, V, PATTERN, RESID_PRE = "attn.hook_z", "attn.hook_v", "attn.hook_pattern", "hook_resid_pre"


@dataclass
class AttentionRun:
    """One forward pass of a single prompt, read at one attention layer.

    input_ids: [pos]. z: [pos, n_heads, d_head]. v: [pos, n_heads, d_head] (expanded per query head).
    pattern: [n_heads, dest, src]. resid_pre: [pos, d_model] (the residual stream the layer reads).
    """

    input_ids: Tensor
    z: Tensor
    v: Tensor
    pattern: Tensor
    resid_pre: Tensor
    extra: dict[str, Tensor] = field(default_factory=dict)


def as_prompt_ids(asae: AttentionSAE, prompt: str | Tensor | list[int], prepend_bos: bool = True) -> Tensor:
    """``[pos]`` token ids of a text (tokenized, BOS prepended) or of given ids."""
    if isinstance(prompt, str):
        ids, _ = asae.lm.tokenize(prompt, prepend_bos=prepend_bos)
        ids = ids[0]
    else:
        ids = asae.lm.as_input_ids(prompt)
        if ids.shape[0] != 1:
            raise SaelabError(f"DFA reads one prompt at a time; got {ids.shape[0]} rows of token ids")
        ids = ids[0]
    if ids.numel() == 0:
        raise SaelabError("the prompt is empty; give at least one token")
    return ids


def run_attention(asae: AttentionSAE, input_ids: Tensor, extra_hooks: tuple[str, ...] = ()) -> AttentionRun:
    """Run ``input_ids [pos]`` up to the SAE's layer (plus any ``extra_hooks``) and read its attention."""
    L = asae.layer  # noqa: N806
    names = [f"blocks.{L}.{Z}", f"blocks.{L}.{V}", f"blocks.{L}.{PATTERN}", f"blocks.{L}.{RESID_PRE}"]
    _, cache = asae.lm.run_with_cache(input_ids[None], [*names, *extra_hooks], stop_at_layer="auto")
    z, v, pattern, resid = (cache[n][0] for n in names)
    v = expand_kv(v.transpose(0, 1), asae.n_heads).transpose(0, 1)  # [pos, n_heads, d_head]
    return AttentionRun(input_ids, z, v, pattern, resid, {h: cache[h][0] for h in extra_hooks})


def check_position(position: int, n_pos: int, what: str = "position") -> int:
    """Resolve a (possibly negative) position index into ``0..n_pos-1``."""
    if isinstance(position, bool) or not isinstance(position, int) or not -n_pos <= position < n_pos:
        raise SaelabError(f"{what}={position!r} is out of range; the prompt has {n_pos} tokens "
                          f"(accepted: {-n_pos}..{n_pos - 1})")
    return position % n_pos


def head_terms(asae: AttentionSAE, z: Tensor, feature: int) -> Tensor:
    """``z [..., n_heads, d_head] -> [..., n_heads]``: the per-head terms z_k · w_{f,k} (float64)."""
    w = asae.encoder_by_head()[:, :, feature]  # [n_heads, d_head]
    return torch.einsum("...hd,hd->...h", z.double(), w)


def source_terms(asae: AttentionSAE, run: AttentionRun, feature: int) -> Tensor:
    """``[n_heads, dest, src]``: DFA[h, dest, src] = pattern[h, dest, src] · (v[src, h] · w_{f,h})."""
    w = asae.encoder_by_head()[:, :, feature]
    value_read = torch.einsum("shd,hd->hs", run.v.double(), w)  # [n_heads, src]
    return run.pattern.double() * value_read[:, None, :]


@dataclass
class DFAResult:
    """DFA of latent ``feature`` at destination ``position`` of one prompt.

    by_head: [n_heads] z_k · w_{f,k}. by_source: [n_heads, src] (zero after ``position``).
    bias, b_dec_term: the constant terms. preactivation: the encoder's linear output from the
    model's z; activation: the SAE's latent value there. reconstructed_z_error: max |Σ_src
    pattern·v − z| (float rounding of the model's attention, for the record).
    """

    feature: int
    position: int
    tokens: list[str]
    by_head: Tensor
    by_source: Tensor
    bias: float
    b_dec_term: float
    preactivation: float
    activation: float
    reconstructed_z_error: float

    @property
    def by_source_total(self) -> Tensor:
        """[src] summed over heads."""
        return self.by_source.sum(0)

    def to_json(self, top: int = 10) -> dict:
        n_heads = self.by_head.shape[0]
        total = self.by_source_total
        order = torch.argsort(total.abs(), descending=True)[:top]
        return {
            "feature": self.feature, "position": self.position, "token": self.tokens[self.position],
            "preactivation": self.preactivation, "activation": self.activation,
            "bias": self.bias, "b_dec_term": self.b_dec_term,
            "by_head": {f"head_{h}": float(self.by_head[h]) for h in range(n_heads)},
            "sum_by_head_plus_bias": float(self.by_head.sum()) + self.bias + self.b_dec_term,
            "sum_by_source_plus_bias": float(total.sum()) + self.bias + self.b_dec_term,
            "top_sources": [{"src": int(s), "token": self.tokens[int(s)], "dfa": float(total[s]),
                             "by_head": [float(x) for x in self.by_source[:, s]]} for s in order],
            "reconstructed_z_error": self.reconstructed_z_error,
        }


def token_strings(asae: AttentionSAE, ids: Tensor) -> list[str]:
    tok = asae.lm.tokenizer
    if tok is None:
        return [str(int(i)) for i in ids]
    return [tok.convert_ids_to_tokens(int(i)) for i in ids]


@torch.no_grad()
def direct_feature_attribution(asae: AttentionSAE, prompt: str | Tensor | list[int], feature: int,
                               position: int = -1, run: AttentionRun | None = None) -> DFAResult:
    """DFA of ``feature`` at ``position`` (default: last token) of ``prompt``, by head and by source."""
    asae.check_feature(feature)
    ids = as_prompt_ids(asae, prompt) if run is None else run.input_ids
    run = run or run_attention(asae, ids)
    dest = check_position(position, ids.shape[0])
    enc = asae.encoder()
    z_dest = run.z[dest]
    by_head = head_terms(asae, z_dest, feature)
    by_source = source_terms(asae, run, feature)[:, dest, :]
    pre = float(enc.preacts(z_dest.reshape(-1))[feature])
    act = float(asae.sae.encode(z_dest.reshape(1, -1).to(asae.sae.W_dec.dtype))[0, feature])
    z_rebuilt = torch.einsum("hs,shd->hd", run.pattern[:, dest].double(), run.v.double())
    error = float((z_rebuilt - z_dest.double()).abs().max())
    return DFAResult(feature, dest, token_strings(asae, ids), by_head, by_source, float(enc.bias[feature]),
                     float(enc.b_dec_term[feature]), pre, act, error)
