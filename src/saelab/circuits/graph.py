"""The head graph and forward passes in which chosen edges carry the corrupted run's head outputs.

Nodes: every attention head and the output (the last residual stream, read by the unembedding).
Edges: ``u -> v`` for every head ``u`` in an earlier block than head ``v``, and ``u -> output`` for
every head. Patching ``u -> v`` swaps ``u``'s contribution to ``v``'s input for its corrupted one: the
residual stream that ``v``'s queries, keys and values read becomes
``resid_pre - out_u(current run) + out_u(corrupted run)``, with ``out_u = z_u · W_O,u``; every other
reader keeps the real stream. Queries, keys and values are recomputed per receiving head from the
folded attention norm and ``W_Q/W_K/W_V``, so any model whose heads each have their own keys and values
works (not grouped-query attention). MLPs are not nodes: they read the residual stream as it is.

Edge masks are ``[n_heads_total + 1, n_heads_total]`` float tensors (row: receiver, last row the
output; column: sender; ``1`` = patched); ``valid_edges`` marks the edges that exist. A stack of
``K`` masks is ``[K, n_heads_total + 1, n_heads_total]``.

Fast runs (``end_logits``, what ACDC uses): a patched edge into a head of block ``L`` changes nothing
before block ``L``, so when every patched edge of a mask ends in block ``L`` or later, blocks
``0..L-1`` compute exactly what the clean run computed. ``clean_run`` caches the clean run's residual
stream entering every block and its head outputs; ``end_logits`` then skips blocks ``0..L-1`` (each
hands on the cached stream entering block ``L``), runs several masks in one forward pass (the prompt
batch stacked once per mask), computes the last block's MLP and head outputs only at each prompt's last
token (nothing else reads them there) and unembeds only that token. Masks that patch only edges into
the output need no forward pass at all.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass

import torch

from saelab.circuits.heads import Head, all_heads, head_outputs_from_z, output_weights
from saelab.errors import SaelabError
from saelab.models.hooking import StopForward
from saelab.models.partial_forward import forwards_replaced, lower_blocks_skipped

OUTPUT = "output"


@dataclass
class CachedRuns:
    """The clean run of the clean prompts ``ids [batch, pos]`` and the corrupted prompts' head outputs,
    cached for ``HeadGraph.end_logits``.

    ``resid[L]``: the clean residual stream entering block ``L`` ``[batch, pos, d_model]``;
    ``resid[n_layers]`` the final stream (the final norm's input). ``outs``/``corrupted``: clean and
    corrupted head outputs ``[batch, pos, n_heads_total, d_model]`` (float32); ``diff`` (clean minus
    corrupted) and ``corrupted_by_sender``: the same sender-major, ``[n_heads_total, batch * pos *
    d_model]``. ``tuple_blocks``: whether the blocks return tuples (transformers 4) or tensors.
    """

    ids: torch.Tensor
    resid: list[torch.Tensor]
    outs: torch.Tensor
    corrupted: torch.Tensor
    diff: torch.Tensor
    corrupted_by_sender: torch.Tensor
    tuple_blocks: bool


def sender_major(outs: torch.Tensor) -> torch.Tensor:
    """Head outputs ``[batch, pos, n_heads_total, d_model]`` -> ``[n_heads_total, batch * pos * d_model]``."""
    return outs.permute(2, 0, 1, 3).reshape(outs.shape[2], -1)


def normalize(spec, x: torch.Tensor) -> torch.Tensor:
    """``spec.normalize(x)`` (float32), with LayerNorm's fused kernel where it applies."""
    if spec.kind == "layernorm":
        return torch.nn.functional.layer_norm(x.float(), x.shape[-1:], eps=spec.eps)
    return spec.normalize(x)


def weighted_diff(current: torch.Tensor, corrupted: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_s weights[k, r, s] (current - corrupted)[k, b, ..., s, :]``: ``current [K|1, batch, ..., S,
    d_model]`` and ``corrupted [batch, ..., S, d_model]`` -> ``[K, batch, ..., R, d_model]``."""
    return torch.einsum("kb...sd,krs->kb...rd", current - corrupted[None], weights)


def edge_graph_refusal(lm) -> str | None:
    """Why ``HeadGraph`` cannot be built for ``lm`` (what the edge-level methods need that it lacks), or
    None when it can."""
    if lm.n_kv_heads != lm.n_heads:
        return (f"one key/value head per query head, and {lm.name} uses grouped-query attention "
                f"({lm.n_heads} query heads, {lm.n_kv_heads} key/value heads)")
    if any(lm.attn_out_norm(layer) is not None for layer in range(lm.n_layers)):
        return f"head outputs added linearly to the residual stream, and {lm.name} normalises the attention output first"
    return None


class HeadGraph:
    """Edge-patchable forward passes of ``lm`` (see module docstring)."""

    def __init__(self, lm):
        refusal = edge_graph_refusal(lm)
        if refusal is not None:
            raise SaelabError(f"edge-level methods need {refusal}; use the node-level methods (dsae, patching, "
                              f"eap, acdc_nodes) instead")
        self.lm = lm
        self.heads = all_heads(lm)
        self.n_nodes = len(self.heads)
        self.W_O = output_weights(lm)
        self.qkv = []  # per block: queries, keys and values of every head from the normalised input
        for layer in range(lm.n_layers):
            weights = (lm.W_Q(layer), lm.W_K(layer), lm.W_V(layer))
            biases = (lm.b_Q(layer), lm.b_K(layer), lm.b_V(layer))
            folded = [lm.fold_layer_norm(W, b, "attn", layer) for W, b in zip(weights, biases, strict=True)]
            self.qkv.append((torch.cat([W for W, _ in folded], -1), torch.cat([b for _, b in folded], -1)))
        self.norms = [lm.norm("attn", layer) for layer in range(lm.n_layers)]
        layers = torch.tensor([h.layer for h in self.heads])
        valid = layers[None, :] < layers[:, None]
        self.valid_edges = torch.cat([valid, torch.ones(1, self.n_nodes, dtype=torch.bool)]).float()
        self.row_layers = torch.cat([layers, torch.tensor([lm.n_layers])])  # block of each receiver row

    def receiver_name(self, row: int) -> str:
        return OUTPUT if row == self.n_nodes else str(self.heads[row])

    def edges(self) -> list[tuple[int, int]]:
        """Every ``(receiver_row, sender_col)`` edge, receivers in reverse topological order (output
        first, then the last block's heads, ...), senders latest first (ACDC's order)."""
        rows = [self.n_nodes] + list(range(self.n_nodes - 1, -1, -1))
        return [(r, s) for r in rows for s in range(self.n_nodes - 1, -1, -1) if self.valid_edges[r, s] > 0]

    def empty_mask(self) -> torch.Tensor:
        return torch.zeros_like(self.valid_edges)

    def start_layer(self, masks: torch.Tensor) -> int:
        """The first block that edge masks ``[K, n_nodes + 1, n_nodes]`` (or one mask) change: the lowest
        block with a head receiving a patched edge, ``n_layers`` when only output edges are patched."""
        masks = masks[None] if masks.ndim == 2 else masks
        receiving = (masks.cpu() * self.valid_edges).any(-1).any(0)
        return int(self.row_layers[receiving].min()) if receiving.any() else self.lm.n_layers

    @torch.no_grad()
    def corrupted_outputs(self, ids: torch.Tensor) -> torch.Tensor:
        """Head outputs of the corrupted run ``[batch, pos, n_heads_total, d_model]``."""
        _, cache = self.lm.run_with_cache(ids, [f"blocks.{L}.attn.hook_z" for L in range(self.lm.n_layers)],
                                          stop_at_layer="auto")
        return head_outputs_from_z([cache[f"blocks.{L}.attn.hook_z"].float() for L in range(self.lm.n_layers)],
                                   self.W_O)

    def _final_stream(self, ids: torch.Tensor, edits: dict, capture: list[str] = (), grad: bool = False,
                      watch=None) -> tuple[torch.Tensor, dict]:
        """Run ``ids`` with ``edits`` up to the final norm; return its input ``[batch, pos, d_model]`` and
        the ``capture``d hooks. ``watch``: a forward hook put on block 0 for this run."""
        lm, stash = self.lm, {}

        def grab(module, args, kwargs):
            stash["final"] = args[0] if args else next(iter(kwargs.values()))
            raise StopForward

        handles = [lm.final_norm.register_forward_pre_hook(grab, with_kwargs=True)]
        if watch is not None:
            handles.append(lm.adapter.blocks()[0].register_forward_hook(watch))
        try:
            with (torch.set_grad_enabled(grad), lm.hooks(edits=edits, capture=capture, detach=not grad) as session,
                  suppress(StopForward)):
                lm.model(input_ids=lm.as_input_ids(ids), use_cache=False)
        finally:
            for handle in handles:
                handle.remove()
        if "final" not in stash:
            raise SaelabError(f"{lm.name}: the forward pass ended without reaching the final norm")
        return stash["final"], session.cache

    @torch.no_grad()
    def cache_runs(self, clean_ids: torch.Tensor, corrupted_ids: torch.Tensor) -> CachedRuns:
        """One clean forward pass of ``clean_ids [batch, pos]`` and one corrupted one of ``corrupted_ids``
        (no unembedding), cached for ``end_logits``."""
        lm, returns = self.lm, []
        if tuple(clean_ids.shape) != tuple(corrupted_ids.shape):
            raise SaelabError(f"clean and corrupted prompts must have the same shape, got {tuple(clean_ids.shape)} "
                              f"and {tuple(corrupted_ids.shape)}")
        hooks = [f"blocks.{L}.{kind}" for L in range(lm.n_layers) for kind in ("hook_resid_pre", "attn.hook_z")]
        final, cache = self._final_stream(clean_ids, {}, hooks,
                                          watch=lambda module, args, out: returns.append(isinstance(out, tuple)))
        resid = [cache[f"blocks.{L}.hook_resid_pre"] for L in range(lm.n_layers)] + [final]
        outs = head_outputs_from_z([cache[f"blocks.{L}.attn.hook_z"].float() for L in range(lm.n_layers)], self.W_O)
        corrupted = self.corrupted_outputs(corrupted_ids)
        return CachedRuns(lm.as_input_ids(clean_ids), resid, outs, corrupted, sender_major(outs - corrupted),
                          sender_major(corrupted), bool(returns[0]))

    def _stream(self, ids: torch.Tensor, masks: torch.Tensor, corrupted_by_sender: torch.Tensor | None,
                start: int = 0, runs: CachedRuns | None = None, end: torch.Tensor | None = None,
                offsets: dict | None = None, z_offsets: list | None = None,
                grad: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Blocks ``start..`` on ``ids [batch, pos]`` stacked once per mask of ``masks [K, n_nodes + 1,
        n_nodes]`` (on the model's device), the blocks before ``start`` taken from ``runs``;
        ``corrupted_by_sender``: the corrupted head outputs ``[n_heads_total, batch * pos * d_model]``.
        Returns the final stream ``[K * batch, pos, d_model]`` before the output row's patches and the
        head outputs of blocks ``start..``, one ``[n_heads, K, batch * pos * d_model]`` per block. With
        ``end [batch]`` only those positions are read: the last block's MLP and head outputs are computed
        there only (the final stream is right only there) and the head outputs returned are those at
        ``end``, ``[n_heads, K, batch, d_model]``. ``offsets``/``z_offsets``: see ``run``."""
        lm, nh, d_model = self.lm, self.lm.n_heads, self.lm.d_model
        K, (b, p) = masks.shape[0], ids.shape
        offsets = offsets or {}
        low = start * nh  # senders before block ``start``: their outputs are the clean run's
        state: dict = {"outs": [], "resid": None, "qkv": None}

        def patched_input(layer: int, heads: torch.Tensor) -> torch.Tensor:
            """``[K, len(heads), batch * pos * d_model]``: the stream that ``heads`` of ``layer`` read,
            ``resid - sum_s w_s (out_s - out_s^corrupted)`` over their patched edges."""
            resid = state["resid"].reshape(K, 1, b * p * d_model)
            weights = masks[:, layer * nh + heads, :layer * nh]  # [K, heads, senders]
            if low and weights[..., :low].any():  # senders of the clean run: one matrix product per mask
                x = resid.new_empty(K, len(heads), b * p * d_model)
                for k in range(K):  # (no gradient here: ``low`` > 0 only in ``end_logits``)
                    torch.addmm(resid[k], weights[k, :, :low], runs.diff[:low], alpha=-1, out=x[k])
            else:
                x = resid.expand(-1, len(heads), -1).clone()
            if layer * nh > low and weights[..., low:].any():  # senders run here, minus their corrupted outputs
                for k in range(K):
                    x[k] += weights[k, :, low:] @ corrupted_by_sender[low:layer * nh]
                    for index, outs in enumerate(state["outs"]):
                        block = weights[k, :, low + index * nh:low + (index + 1) * nh]  # [heads, nh]
                        if block.any():
                            x[k] -= block @ outs[:, k]
            return x

        def take_resid(value):
            state["resid"] = value.float()
            state["qkv"] = None

        def patched_qkv(layer: int):
            """Queries, keys and values ``[K, heads, batch * pos, 3 * d_head]`` recomputed for the heads
            whose input changes in some mask, those heads, and per row which of them change (or None)."""
            changed = masks[:, layer * nh:(layer + 1) * nh].any(-1) | (layer in offsets)  # [K, nh]
            heads = changed.any(0).nonzero()[:, 0]
            if not len(heads):
                return False
            x = patched_input(layer, heads).view(K, len(heads), b * p, d_model)
            if layer in offsets:
                x = x + offsets[layer][:, :, heads].permute(2, 0, 1, 3).reshape(1, len(heads), b * p, d_model)
            W, bias = self.qkv[layer]
            recomputed = torch.matmul(normalize(self.norms[layer], x), W[heads]) + bias[heads][:, None]
            rows = None if changed[:, heads].all() else changed[:, heads].repeat_interleave(b, 0)[:, None, :, None]
            return recomputed, heads, rows

        def edit_qkv(layer: int, which: int):
            def fn(value):
                if state["qkv"] is None:
                    state["qkv"] = patched_qkv(layer)
                if state["qkv"] is False:
                    return None
                recomputed, heads, rows = state["qkv"]
                new = recomputed[..., which * lm.d_head:(which + 1) * lm.d_head].view(K, len(heads), b, p, lm.d_head)
                new = new.permute(0, 2, 3, 1, 4).reshape(K * b, p, len(heads), lm.d_head).to(value.dtype)
                if rows is not None:  # heads whose input is unchanged keep the model's own values
                    new = torch.where(rows, new, value[:, :, heads])
                if len(heads) == nh:
                    return new
                out = value.clone()
                out[:, :, heads] = new
                return out
            return fn

        ends = None if end is None else (torch.arange(K * b, device=lm.device), end.to(lm.device).repeat(K))

        def take_z(layer: int):
            def fn(value):
                if z_offsets is not None:
                    value = value + z_offsets[layer].to(value.dtype)
                if ends is not None and layer == lm.n_layers - 1:  # read only by the output, at the last tokens
                    outs = torch.einsum("bhk,hkd->hbd", value[ends].float(), self.W_O[layer])
                else:
                    outs = torch.einsum("bphk,hkd->hbpd", value.float(), self.W_O[layer])
                state["outs"].append(outs.reshape(nh, K, -1))
                return value if z_offsets is not None else None
            return fn

        edits = {}
        for layer in range(start, lm.n_layers):
            edits[f"blocks.{layer}.hook_resid_pre"] = take_resid
            for which, kind in enumerate(("q", "k", "v")):
                edits[f"blocks.{layer}.attn.hook_{kind}"] = edit_qkv(layer, which)
            edits[f"blocks.{layer}.attn.hook_z"] = take_z(layer)
        resid = (runs.resid[start].repeat(K, 1, 1) if K > 1 else runs.resid[start]) if start else None
        with forwards_replaced(lower_blocks_skipped(lm, resid, start, bool(runs and runs.tuple_blocks), ends)):
            final, _ = self._final_stream(ids.repeat(K, 1) if K > 1 else ids, edits, grad=grad)
        if ends is None:
            return final, state["outs"]
        *before, last = state["outs"]
        rows, end = torch.arange(b, device=lm.device), end.to(lm.device)
        return final, [o.view(nh, K, b, p, d_model)[:, :, rows, end] for o in before] + [last.view(nh, K, b, d_model)]

    def _check_masks(self, masks: torch.Tensor | None, corrupted: torch.Tensor | None) -> torch.Tensor:
        """One mask or a stack -> ``[K, n_nodes + 1, n_nodes]`` of valid edges on the model's device."""
        masks = self.empty_mask() if masks is None else masks
        masks = masks[None] if masks.ndim == 2 else masks
        if masks.ndim != 3 or tuple(masks.shape[1:]) != tuple(self.valid_edges.shape):
            raise SaelabError(f"edge masks must have shape [n_nodes + 1, n_nodes] = {tuple(self.valid_edges.shape)} "
                              f"or a stack [K, ...] of them, got {tuple(masks.shape)}")
        masks = (masks.detach().cpu().float() * self.valid_edges).to(self.lm.device)
        if masks.any() and corrupted is None:
            raise SaelabError("patched edges need the corrupted run's head outputs")
        return masks

    @torch.no_grad()
    def end_logits(self, runs: CachedRuns, masks: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
        """Logits ``[K, batch, d_vocab]`` at each prompt's last token ``end [batch]`` of the clean prompts
        of ``runs`` with the edges of each mask of ``masks`` (one mask or ``[K, ...]``) reading the
        corrupted head outputs; only blocks from ``start_layer(masks)`` on run, once for all masks."""
        masks = self._check_masks(masks, runs.corrupted)
        K, start, n_layers = masks.shape[0], self.start_layer(masks), self.lm.n_layers
        rows, end = torch.arange(len(runs.ids), device=runs.outs.device), end.to(runs.outs.device)
        # head outputs at the last tokens [K, batch, n_nodes, d_model]: the clean run's before block ``start``
        current = runs.outs[rows, end][None].expand(K, -1, -1, -1)
        if start == n_layers:
            final = runs.resid[-1][rows, end][None].expand(K, -1, -1)
        else:
            final, outs = self._stream(runs.ids, masks, runs.corrupted_by_sender, start, runs, end)
            final = final.reshape(K, -1, *final.shape[1:])[:, rows, end]  # [K, batch, d_model]
            late = [o.permute(1, 2, 0, 3) for o in outs]  # [K, batch, n_heads, d_model] per block
            current = torch.cat([current[:, :, :start * self.lm.n_heads], *late], dim=2)
        weights = masks[:, self.n_nodes][:, None]  # [K, 1, n_nodes]
        if weights.any():
            final = final - weighted_diff(current, runs.corrupted[rows, end], weights)[:, :, 0].to(final.dtype)
        return self.lm.unembed(self.lm.final_norm(final))

    def run(self, ids: torch.Tensor, patched: torch.Tensor | None = None, corrupted: torch.Tensor | None = None,
            receiver_offsets: dict | None = None, z_offsets: list | None = None, grad: bool = False) -> torch.Tensor:
        """Logits ``[batch, pos, d_vocab]`` of ``ids`` with the edges in ``patched`` (an edge mask) reading
        ``corrupted`` head outputs; a full forward pass. ``receiver_offsets``: block index ->
        ``[batch, pos, n_heads, d_model]`` added to each head's input, and ``OUTPUT`` -> ``[batch, pos,
        d_model]`` added to the final stream; ``z_offsets``: per block ``[batch, pos, n_heads, d_head]``
        added to ``hook_z`` (gradient probes)."""
        masks = self._check_masks(patched, corrupted)
        offsets = receiver_offsets or {}
        by_sender = sender_major(corrupted) if corrupted is not None else None
        with torch.set_grad_enabled(grad):
            final, outs = self._stream(self.lm.as_input_ids(ids), masks, by_sender, offsets=offsets,
                                       z_offsets=z_offsets, grad=grad)
            weights = masks[0, self.n_nodes]
            if weights.any():
                current = torch.cat(outs, dim=0)[:, 0]  # [n_nodes, batch * pos * d_model]
                final = final - (weights @ (current - by_sender)).view(final.shape).to(final.dtype)
            if OUTPUT in offsets:
                final = final + offsets[OUTPUT].to(final.dtype)
            return self.lm.unembed(self.lm.final_norm(final))


def node_set(graph: HeadGraph, kept: torch.Tensor) -> list[Head]:
    """Heads on a path of kept edges (mask ``kept``, 1 = kept) that ends at the output."""
    kept = kept * graph.valid_edges
    alive = torch.zeros(graph.n_nodes + 1, dtype=torch.bool)
    alive[graph.n_nodes] = True
    for row in [graph.n_nodes] + list(range(graph.n_nodes - 1, -1, -1)):
        if alive[row]:
            alive[: graph.n_nodes] |= kept[row] > 0
    return [h for h, a in zip(graph.heads, alive[: graph.n_nodes].tolist(), strict=True) if a]
