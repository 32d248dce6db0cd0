"""Edge attribution patching (Syed et al. 2023): a first-order estimate of every patching effect from
one corrupted forward pass and one clean forward and backward pass.

- node level: ``(z_h^corrupted - z_h^clean) · dM/dz_h`` summed over positions, averaged over prompts;
- edge level (``u -> v`` of ``saelab.circuits.graph``): ``(out_u^corrupted - out_u^clean) · dM/d(input
  of v)``, the same sums; a head's edge-level score is the sum of ``|score|`` over its outgoing edges.

``M`` is the task metric (mean over prompts). Heads are ranked by the absolute value. On models without
the head graph (grouped-query attention, a norm after the attention output: ``graph.edge_graph_refusal``)
the node level is computed from ``hook_z`` gradients of the model itself (``eap_node_attributions``).
"""

from __future__ import annotations

import time

import torch

from saelab.circuits.acdc_nodes import end_metric
from saelab.circuits.graph import OUTPUT, HeadGraph, edge_graph_refusal
from saelab.circuits.heads import all_heads, cache_z, head_outputs_from_z
from saelab.circuits.result import MethodResult
from saelab.circuits.tasks import TaskBatch


def eap_attributions(graph: HeadGraph, batch: TaskBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(node [n_heads_total], edge [n_heads_total + 1, n_heads_total])`` signed attributions."""
    lm, nh = graph.lm, graph.lm.n_heads
    corrupted_z, clean_z = cache_z(lm, batch.corrupted_ids), cache_z(lm, batch.clean_ids)
    b, p = batch.clean_ids.shape
    z_probes = [torch.zeros(b, p, nh, lm.d_head, requires_grad=True) for _ in range(lm.n_layers)]
    input_probes = {layer: torch.zeros(b, p, nh, lm.d_model, requires_grad=True) for layer in range(1, lm.n_layers)}
    input_probes[OUTPUT] = torch.zeros(b, p, lm.d_model, requires_grad=True)
    logits = graph.run(batch.clean_ids, receiver_offsets=input_probes, z_offsets=z_probes, grad=True)
    batch.metric(logits).mean().backward()
    # the gradient of the mean metric already carries the 1/b of the average over prompts
    node = torch.cat([((cz - z) * probe.grad).sum((0, 1, 3))
                      for cz, z, probe in zip(corrupted_z, clean_z, z_probes, strict=True)])
    diff = head_outputs_from_z(corrupted_z, graph.W_O) - head_outputs_from_z(clean_z, graph.W_O)
    grads = torch.cat([torch.zeros(b, p, nh, lm.d_model)] + [input_probes[L].grad for L in range(1, lm.n_layers)]
                      + [input_probes[OUTPUT].grad[:, :, None]], dim=2)
    edge = torch.einsum("bpsd,bprd->rs", diff, grads)
    return node.detach(), edge.detach() * graph.valid_edges


def eap_node_attributions(lm, batch: TaskBatch) -> torch.Tensor:
    """``[n_heads_total]`` signed node attributions from one clean forward and backward pass of the model
    itself (zero probes added to ``hook_z``; only the last tokens unembedded), no head graph needed."""
    corrupted_z, clean_z = cache_z(lm, batch.corrupted_ids), cache_z(lm, batch.clean_ids)
    probes = [torch.zeros_like(z, requires_grad=True) for z in clean_z]
    edits = {f"blocks.{L}.attn.hook_z": lambda z, probe=probe: z + probe.to(device=z.device, dtype=z.dtype)
             for L, probe in enumerate(probes)}
    final, _ = lm.run_to_unembed(batch.clean_ids, edits, grad=True)
    rows = torch.arange(len(batch), device=final.device)
    end_metric(batch, lm.unembed(final[rows, batch.end.to(final.device)]).float()).mean().backward()
    return torch.cat([((cz - z) * probe.grad).sum((0, 1, 3))
                      for cz, z, probe in zip(corrupted_z, clean_z, probes, strict=True)]).detach()


def run_eap(lm, batch: TaskBatch, level: str = "node") -> MethodResult:
    """EAP on ``batch`` scored per head at ``level`` ``node`` or ``edge`` (both sets of scores kept where
    the head graph exists)."""
    refusal = edge_graph_refusal(lm)
    if level == "node" and refusal is not None:
        start = time.perf_counter()
        node = eap_node_attributions(lm, batch)
        return MethodResult("eap", batch.task, all_heads(lm), node.abs().numpy(), time.perf_counter() - start,
                            details={"n_prompts": len(batch), "level": level,
                                     "engine": f"hook_z gradients (no head graph: it needs {refusal})"})
    start = time.perf_counter()
    graph = HeadGraph(lm)
    node, edge = eap_attributions(graph, batch)
    runtime = time.perf_counter() - start
    edge_per_head = edge.abs().sum(0).numpy()
    scores = node.abs().numpy() if level == "node" else edge_per_head
    top_edges = sorted(((float(edge[r, s].abs()), r, s) for r, s in graph.edges()), reverse=True)[:10]
    return MethodResult("eap" if level == "node" else "eap_edges", batch.task, graph.heads, scores, runtime,
                        details={"n_prompts": len(batch), "level": level,
                                 "top_edges": [{"edge": f"{graph.heads[s]}->{graph.receiver_name(r)}",
                                                "score": round(float(edge[r, s]), 6)} for _, r, s in top_edges]})
