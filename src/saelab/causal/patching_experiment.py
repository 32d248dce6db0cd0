"""The feature-patching experiment (Cunningham et al. 2023, arXiv 2309.08600, section 4).

For clean/counterfactual prompt pairs and a hook, encode both runs' activations in a basis (SAE
latents, PCA, ICA, neurons, a random rotation). Patching a set S of components sets the hook's value
at every real position to

    x_clean + decode(c_S) − decode(c_clean),   c_S = c_cf on S, c_clean elsewhere,

so the clean run's residual x − decode(encode(x)) is preserved. The metric is the KL divergence
KL(p_cf ‖ p_patched) of the next-token distributions at each prompt's final position, averaged
over prompts.

Greedy search: start with every component whose coefficients differ between the runs patched
(the others change nothing). For each threshold τ (ascending; the set carries over), measure for
every patched component the KL increase its removal would cause; in ascending order of that
increase, un-patch each candidate whose removal (given the removals so far) raises the KL by less
than τ; repeat until no patched component can be removed for less than τ. Each τ gives one point
(components patched, KL) of the basis's curve. Sequential decisions are evaluated in batches of
prefix sets, so the result equals the one-at-a-time greedy.

The floor: with every component patched the value is x_cf + e_clean − e_cf (e = x − decode(encode(x))),
and a basis that does not reconstruct exactly (an SAE) starts its curve at ``kl_floor`` > 0, the KL of
that first point, instead of at 0: KL levels under it are out of reach unless un-patching happens to
lower the KL (``below_floor`` lists the levels a curve never reached that lie under its floor). Each
curve reports the floor with the basis's FVU on the prompts' activations (both runs, real positions).

Speed: at a residual-stream hook (``blocks.L.hook_resid_post``, ``blocks.L.hook_resid_pre``) the
blocks below the hook compute nothing in the patched runs (they hand on the patched stream,
``models.partial_forward``); the last block's MLP runs and the unembedding is read at the final
positions only. Other hooks run the whole model with the value swapped in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor
from tqdm.auto import tqdm

from saelab.causal.bases import Basis
from saelab.causal.prompts import PromptPairs
from saelab.errors import ConfigError, check_choice, check_range
from saelab.models import LoadedModel
from saelab.models.partial_forward import blocks_return_tuples, handing_on
from saelab.splicing import flat_per_token

SEARCHES = ("greedy", "attribution")


@dataclass
class PatchingConfig:
    """Thresholds ``logspace(log10(min_threshold), log10(max_threshold), n_thresholds)``; ``chunk``:
    candidate sets per forward pass; ``kl_fractions``: KL levels (fractions of the unpatched KL) at
    which the summary reports the fewest components reaching them; ``search``: ``greedy`` (the
    paper's, above) or ``attribution`` (``causal.attribution_search``: far fewer forward passes, for
    large models on small machines)."""

    n_thresholds: int = 50
    min_threshold: float = 1e-5
    max_threshold: float = 1.0
    chunk: int = 32
    kl_fractions: tuple[float, ...] = (0.5, 0.25, 0.1, 0.05)
    search: str = "greedy"

    def __post_init__(self) -> None:
        check_choice("search", self.search, SEARCHES)
        check_range("n_thresholds", self.n_thresholds, 1, 10_000, integer=True)
        check_range("min_threshold", self.min_threshold, 0, None, lo_open=True)
        check_range("max_threshold", self.max_threshold, self.min_threshold, None)
        check_range("chunk", self.chunk, 1, None, integer=True)
        for fraction in self.kl_fractions:
            check_range("kl_fractions", fraction, 0, 1, lo_open=True)
        if not self.kl_fractions:
            raise ConfigError("kl_fractions=() is empty; give at least one fraction in (0, 1]")

    def thresholds(self) -> np.ndarray:
        return np.logspace(np.log10(self.min_threshold), np.log10(self.max_threshold), self.n_thresholds)


@dataclass
class BasisCurve:
    """points: dicts ``{threshold, n_patched, kl}`` (threshold 0: everything that differs patched)."""

    basis: str
    n_components: int
    n_differing: int
    kl_all_patched: float
    fvu: float = 0.0
    l0: float = 0.0
    points: list[dict] = field(default_factory=list)
    forward_sets: int = 0

    def fewest_reaching(self, level: float) -> int | None:
        """The smallest number of patched components with KL <= ``level`` (None: never reached)."""
        counts = [p["n_patched"] for p in self.points if p["kl"] <= level]
        return min(counts) if counts else None

    def to_json(self) -> dict:
        """``kl_floor`` is ``kl_all_patched`` under the name that says what it bounds."""
        return {"basis": self.basis, "n_components": self.n_components, "n_differing": self.n_differing,
                "kl_all_patched": self.kl_all_patched, "kl_floor": self.kl_all_patched, "fvu_prompts": self.fvu,
                "l0_prompts": self.l0, "forward_sets": self.forward_sets, "points": self.points}


class PatchingRun:
    """The two runs' activations at ``hook`` and the counterfactual's final log-probs; evaluates sets."""

    def __init__(self, lm: LoadedModel, hook: str, prompts: PromptPairs, chunk: int = 32):
        lm.parse_hooks([hook])
        self.lm, self.hook, self.prompts, self.chunk = lm, hook, prompts, chunk
        with torch.no_grad():
            logits, cache = lm.run_with_cache(prompts.clean_ids, [hook], attention_mask=prompts.mask)
            self.clean_logprobs = self._final_logprobs(logits)
            cf_logits, cf_cache = lm.run_with_cache(prompts.counterfactual_ids, [hook], attention_mask=prompts.mask)
            self.cf_logprobs = self._final_logprobs(cf_logits)
        self.value_shape = tuple(cache[hook].shape)
        self.x_clean = flat_per_token(cache[hook]).float()
        self.x_cf = flat_per_token(cf_cache[hook]).float()
        self.real = prompts.mask.bool()
        self.kl_unpatched = self.kl(self.clean_logprobs[None])[0].item()
        self.start = residual_start(lm, hook)
        if self.start:
            self.tuple_blocks = blocks_return_tuples(lm)
        else:
            self.keep_kwargs, self.final_index = self._logits_to_keep()

    def _logits_to_keep(self) -> tuple[dict, Tensor]:
        """Ask the model for logits at the final positions only (``logits_to_keep``) when it accepts it."""
        kept = torch.unique(self.prompts.final)
        try:
            with torch.no_grad():
                self.lm.model(input_ids=self.prompts.clean_ids[:1], attention_mask=self.prompts.mask[:1], use_cache=False,
                              logits_to_keep=kept)
        except TypeError:
            return {}, self.prompts.final
        return {"logits_to_keep": kept}, torch.searchsorted(kept, self.prompts.final)

    def _final_logprobs(self, logits: Tensor) -> Tensor:
        rows = torch.arange(logits.shape[0], device=logits.device)
        return F.log_softmax(logits[rows, self.prompts.final.to(logits.device)].float(), -1)

    def kl(self, logprobs: Tensor) -> Tensor:
        """``[sets]`` mean over prompts of KL(p_cf ‖ p) for ``logprobs [sets, n, d_vocab]``."""
        cf = self.cf_logprobs[None]
        return (cf.exp() * (cf - logprobs)).sum(-1).mean(-1)

    def kl_of_values(self, x: Tensor) -> Tensor:
        """``[sets]`` KL when the hook's value is ``x [sets, n, pos, d_in]`` (float) in each set's run;
        differentiable when ``x`` requires grad."""
        with torch.set_grad_enabled(x.requires_grad):
            return self._kl_of_values(x, x.requires_grad)

    def _kl_of_values(self, x: Tensor, grad: bool) -> Tensor:
        sets, n = x.shape[:2]
        ids = self.prompts.clean_ids.repeat(sets, 1)
        mask = self.prompts.mask.repeat(sets, 1)
        replacement = x.reshape(sets * n, *self.value_shape[1:])
        rows = torch.arange(sets * n)
        if self.start:
            ends = (rows.to(self.lm.device), self.prompts.final.repeat(sets).to(self.lm.device))
            value = replacement.to(device=self.lm.device, dtype=self.lm.dtype)
            with handing_on(self.lm, value, self.start, self.tuple_blocks, ends):
                final, _ = self.lm.run_to_unembed(ids, attention_mask=mask, grad=grad)
            logprobs = F.log_softmax(self.lm.unembed(final[ends]).float(), -1)
            return self.kl(logprobs.reshape(sets, n, -1))

        def edit(value: Tensor) -> Tensor:
            return replacement.to(value.dtype)

        logits = self.lm.run_with_hooks(ids, {self.hook: edit}, attention_mask=mask, grad=grad, **self.keep_kwargs)
        final = self.final_index.repeat(sets)
        logprobs = F.log_softmax(logits[rows, final].float(), -1)
        return self.kl(logprobs.reshape(sets, n, -1))


def residual_start(lm: LoadedModel, hook: str) -> int:
    """The block a patched value at ``hook`` enters when it is the residual stream between two blocks
    (``blocks.L.hook_resid_post`` -> ``L + 1``, ``blocks.L.hook_resid_pre`` -> ``L``); 0 otherwise (and
    for the first block's input and the last block's output, where nothing can be skipped)."""
    match = re.fullmatch(r"blocks\.(\d+)\.hook_resid_(pre|post)", hook)
    if not match:
        return 0
    start = int(match.group(1)) + (match.group(2) == "post")
    return start if 0 < start < lm.n_layers else 0


class BasisPatcher:
    """Coefficients of both runs in one basis; the KL of any patched set (``[sets, k]`` bool masks)."""

    def __init__(self, run: PatchingRun, basis: Basis):
        self.run, self.basis = run, basis
        with torch.no_grad():
            self.c_clean = basis.encode(run.x_clean).float()
            c_cf = basis.encode(run.x_cf).float()
            self.delta = (c_cf - self.c_clean) * run.real[..., None]
            self.x_hat_clean = basis.decode(self.c_clean).float()
            self.fvu, self.l0 = _fvu_and_l0(run, torch.cat([self.c_clean[run.real], c_cf[run.real]]),
                                            torch.cat([self.x_hat_clean[run.real], basis.decode(c_cf).float()[run.real]]))
        self.differing = self.delta.abs().amax((0, 1)) > 0
        self.forward_sets = 0

    def values(self, masks: Tensor) -> Tensor:
        """The hook's values ``[sets, n, pos, d_in]`` for masks ``[sets, k]`` (float in [0, 1] or bool)."""
        c = self.c_clean[None] + masks.float()[:, None, None, :] * self.delta[None]
        return self.run.x_clean[None] + self.basis.decode(c).float() - self.x_hat_clean[None]

    @torch.no_grad()
    def kl(self, masks: Tensor) -> Tensor:
        """``[sets]`` KL for component masks ``[sets, k]`` (evaluated ``run.chunk`` sets per forward)."""
        out = []
        for start in range(0, masks.shape[0], self.run.chunk):
            m = masks[start:start + self.run.chunk]
            out.append(self.run.kl_of_values(self.values(m)))
            self.forward_sets += m.shape[0]
        return torch.cat(out)

    def kl_and_gradient(self, mask: Tensor) -> tuple[float, Tensor]:
        """The KL of one mask ``[k]`` and its gradient ``[k]`` with respect to the mask relaxed to reals
        (one forward and one backward pass)."""
        m = mask.float().clone().requires_grad_(True)
        kl = self.run.kl_of_values(self.values(m[None]))[0]
        (grad,) = torch.autograd.grad(kl, m)
        self.forward_sets += 1
        return float(kl.detach()), grad


def _fvu_and_l0(run: PatchingRun, c: Tensor, x_hat: Tensor) -> tuple[float, float]:
    """FVU of ``x_hat [tokens, d_in]`` against both runs' activations at real positions (Σ‖x − x̂‖² over
    Σ‖x − mean‖²) and the mean number of non-zero coefficients ``c [tokens, k]`` per token."""
    x = torch.cat([run.x_clean[run.real], run.x_cf[run.real]])
    fvu = float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum().clamp_min(1e-30))
    return fvu, float((c != 0).float().sum(-1).mean())


def start_curve(patcher: BasisPatcher) -> tuple[BasisCurve, Tensor, float]:
    """Everything that differs patched: the curve with its first point, the patched mask ``[k]``, its KL."""
    patched = patcher.differing.clone()
    kl_now = float(patcher.kl(patched[None])[0])
    curve = BasisCurve(patcher.basis.name, patcher.basis.n_components, int(patched.sum()), kl_now,
                       patcher.fvu, patcher.l0)
    curve.points.append({"threshold": 0.0, "n_patched": int(patched.sum()), "kl": kl_now})
    return curve, patched, kl_now


def greedy_curve(patcher: BasisPatcher, thresholds: np.ndarray, progress: bool = False) -> BasisCurve:
    """The greedy un-patching curve of one basis (see the module docstring)."""
    curve, patched, kl_now = start_curve(patcher)
    removal_kl: tuple[Tensor, Tensor] | None = None
    for tau in tqdm(thresholds, desc=f"greedy {patcher.basis.name}", disable=not progress, leave=False):
        while patched.any():
            if removal_kl is None:
                removal_kl = _removal_kls(patcher, patched)
            index, kls = removal_kl
            increase = kls - kl_now
            candidates = index[increase < tau][torch.argsort(increase[increase < tau])]
            if candidates.numel() == 0:
                break
            kl_now, removed = _remove_in_order(patcher, patched, candidates.tolist(), kl_now, float(tau))
            removal_kl = None
            if not removed:  # a borderline candidate re-measured just above tau: nothing left to remove
                break
        curve.points.append({"threshold": float(tau), "n_patched": int(patched.sum()), "kl": kl_now})
    curve.forward_sets = patcher.forward_sets
    return curve


def _removal_kls(patcher: BasisPatcher, patched: Tensor) -> tuple[Tensor, Tensor]:
    """(indices of patched components, KL after removing each one alone)."""
    index = patched.nonzero().squeeze(1)
    masks = patched[None].repeat(index.numel(), 1)
    masks[torch.arange(index.numel()), index] = False
    return index, patcher.kl(masks)


def _remove_in_order(patcher: BasisPatcher, patched: Tensor, candidates: list[int], kl_now: float,
                     tau: float) -> tuple[float, int]:
    """Un-patch ``candidates`` one at a time in order, each only if it raises KL by < ``tau`` given the
    removals before it; evaluates prefixes of a chunk in one batch. Updates ``patched``; returns the KL
    and how many were removed."""
    pending, removed = list(candidates), 0
    while pending:
        chunk = pending[:patcher.run.chunk]
        masks = patched[None].repeat(len(chunk), 1)
        for j, component in enumerate(chunk):
            masks[j:, component] = False
        kls = patcher.kl(masks).tolist()
        accepted = 0
        for kl in kls:
            if kl - kl_now >= tau:
                break
            kl_now, accepted = kl, accepted + 1
        patched[chunk[:accepted]] = False
        removed += accepted
        pending = pending[accepted + (accepted < len(chunk)):]
    return kl_now, removed


def run_patching_experiment(lm: LoadedModel, hook: str, prompts: PromptPairs, bases: dict[str, Basis],
                            cfg: PatchingConfig | None = None, progress: bool = True) -> dict:
    """Curves for every basis plus the summary: for each KL level, the fewest components reaching it."""
    cfg = cfg or PatchingConfig()
    run = PatchingRun(lm, hook, prompts, cfg.chunk)
    curves = {}
    if cfg.search == "greedy":
        search = greedy_curve
    else:
        from saelab.causal.attribution_search import attribution_curve as search
    for name, basis in bases.items():
        curves[name] = search(BasisPatcher(run, basis), cfg.thresholds(), progress)
    levels = {f"{fraction:g}": fraction * run.kl_unpatched for fraction in cfg.kl_fractions}
    fewest = {name: {key: curve.fewest_reaching(level) for key, level in levels.items()}
              for name, curve in curves.items()}
    below_floor = {name: [key for key, level in levels.items()
                          if fewest[name][key] is None and level < curve.kl_all_patched]
                   for name, curve in curves.items()}
    return {"hook": hook, "search": cfg.search, "n_prompts": prompts.n, "dropped_pairs": prompts.dropped,
            "kl_unpatched": run.kl_unpatched, "kl_levels": levels,
            "fewest_components": fewest, "below_floor": below_floor,
            "curves": {name: c.to_json() for name, c in curves.items()}}
