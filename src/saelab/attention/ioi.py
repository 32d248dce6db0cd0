"""IOI through attention-SAE latents (Kissane et al. 2024): zero-ablate each latent active at S2 and
record the change in logit difference logit(IO) − logit(S) at the final position, split by ABBA/BABA.

Ablating latent ``f`` at S2 subtracts ``act_f · W_dec[f]`` from ``hook_z`` there (the SAE's error term
stays, so without ablation the run is the clean model). A latent is *causally relevant* when its
mean |Δ logit diff| over the prompts where it fires is at least ``min_effect``, and *positional* when
its S2 activation tells ABBA from BABA: ``|AUC − 0.5| ≥ positional_auc_margin`` (AUC of the
activation as a score for ABBA over all prompts), the two templates differing only in whether the
subject comes before or after "and".

The SAE must read a layer before the last: what a last-layer latent writes at S2 never reaches the
final position, so every effect would be 0 (refused with an error naming the layers accepted).

Prompts: ``saelab.toy.tasks`` IOI pairs (the toy world); any model whose tokenizer maps each prompt
word to one token can use them (checked).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saelab.attention.geometry import AttentionSAE
from saelab.errors import SaelabError, check_range


@dataclass
class IOIPrompts:
    """ids: ``[n, pos]`` (right-padded), s2/end: ``[n]`` positions, io/s: ``[n]`` answer token ids,
    abba: ``[n]`` bool (True for ABBA)."""

    ids: Tensor
    mask: Tensor
    s2: Tensor
    end: Tensor
    io: Tensor
    s: Tensor
    abba: Tensor


def toy_ioi_prompts(asae: AttentionSAE, n: int = 64, seed: int = 0) -> IOIPrompts:
    """``n`` IOI prompts from the toy world's generator, tokenized word by word (BOS first)."""
    from saelab.toy.tasks import generate_pairs

    lm = asae.lm
    if lm.tokenizer is None or lm.bos_token_id is None:
        raise SaelabError(f"{lm.name} needs a tokenizer with a BOS token for the IOI prompts")
    pairs = generate_pairs("ioi", n, seed)
    unk = lm.tokenizer.unk_token_id

    def ids_of(words):
        out = lm.tokenizer.convert_tokens_to_ids(list(words))
        if any(i is None or i == unk for i in out):
            raise SaelabError(f"{lm.name}'s tokenizer has no single token for some words of {' '.join(words)!r}; "
                              "the toy IOI prompts need the toy model (or a word-level tokenizer)")
        return out

    rows = [[lm.bos_token_id, *ids_of(p.clean.words)] for p in pairs]
    width = max(map(len, rows))
    ids = torch.zeros(n, width, dtype=torch.long)
    mask = torch.zeros(n, width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)], mask[i, :len(row)] = torch.tensor(row), 1
    return IOIPrompts(ids, mask, torch.tensor([p.clean.positions["S2"] + 1 for p in pairs]),
                      torch.tensor([len(r) - 1 for r in rows]),
                      torch.tensor([ids_of(p.answers)[0] for p in pairs]),
                      torch.tensor([ids_of(p.wrong_answers)[0] for p in pairs]),
                      torch.tensor([p.variant == "ABBA" for p in pairs]))


def _auc(scores: Tensor, positive: Tensor) -> float:
    """Probability that a positive outscores a negative (ties count half)."""
    pos, neg = scores[positive], scores[~positive]
    if pos.numel() == 0 or neg.numel() == 0:
        return 0.5
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).float() + 0.5 * (diff == 0).float()).mean())


@dataclass
class IOIResult:
    clean_logit_diff: dict[str, float]
    latents: list[dict]
    min_effect: float

    def to_json(self) -> dict:
        relevant = [e for e in self.latents if e["relevant"]]
        return {"clean_logit_diff": self.clean_logit_diff, "n_latents_active_at_s2": len(self.latents),
                "min_effect": self.min_effect,
                "relevant_latents": [e["latent"] for e in relevant],
                "positional_relevant_latents": [e["latent"] for e in relevant if e["positional"]],
                "most_positional_latents": [
                    {"latent": e["latent"], "abba_auc": e["abba_auc"], "mean_abs_effect": e["mean_abs_effect"]}
                    for e in sorted(self.latents, key=lambda e: -abs(e["abba_auc"] - 0.5))[:5]],
                "latents": self.latents}


@torch.no_grad()
def ioi_latent_ablation(asae: AttentionSAE, prompts: IOIPrompts, min_effect: float = 0.1,
                        positional_auc_margin: float = 0.3, latents: list[int] | None = None,
                        progress: bool = False) -> IOIResult:
    """Zero-ablate every latent active at S2 in any prompt (or only those of ``latents`` that are);
    see the module docstring."""
    check_range("min_effect", min_effect, 0)
    check_range("positional_auc_margin", positional_auc_margin, 0, 0.5)
    lm, sae, hook = asae.lm, asae.sae, asae.hook_name
    if asae.layer >= lm.n_layers - 1:
        accepted = (f"use an SAE on layers 0..{lm.n_layers - 2} (the layers whose S2 output later heads read)"
                    if lm.n_layers > 1 else "a one-layer model has no such layer")
        raise SaelabError(f"{hook} is the last attention layer of {lm.name}: a latent ablated at S2 cannot reach "
                          f"the final position, so every effect would be 0; {accepted}")
    rows = torch.arange(prompts.ids.shape[0])

    def logit_diff(edits) -> Tensor:
        logits = lm.run_with_hooks(prompts.ids, edits, attention_mask=prompts.mask).float()
        last = logits[rows, prompts.end]
        return (last[rows, prompts.io] - last[rows, prompts.s]).cpu()

    _, cache = lm.run_with_cache(prompts.ids, [hook], stop_at_layer="auto", attention_mask=prompts.mask)
    z_s2 = cache[hook][rows, prompts.s2].reshape(rows.shape[0], -1).to(sae.W_dec.dtype)
    acts = sae.encode(z_s2).float().cpu()  # [n, d_sae]
    clean = logit_diff({})
    abba = prompts.abba
    split = {"all": float(clean.mean()), "ABBA": float(clean[abba].mean()) if abba.any() else None,
             "BABA": float(clean[~abba].mean()) if (~abba).any() else None}
    active = (acts > 0).any(0).nonzero().flatten().tolist()
    if latents is not None:
        for f in latents:
            asae.check_feature(f)
        active = [f for f in active if f in set(latents)]
    out = []
    for f in tqdm(active, desc="ablating latents at S2", disable=not progress):
        delta_z = acts[:, f, None].to(sae.W_dec.dtype) * sae.W_dec[f].detach()[None]  # [n, d_in]

        def ablate(z: Tensor, delta_z=delta_z) -> Tensor:
            z = z.clone()
            z[rows, prompts.s2] -= delta_z.reshape(-1, *z.shape[2:]).to(z.dtype)
            return z

        change = logit_diff({hook: ablate}) - clean
        fired = acts[:, f] > 0
        effect = float(change[fired].abs().mean())
        auc = _auc(acts[:, f], abba)
        out.append({"latent": f, "fires_on": int(fired.sum()), "mean_activation": float(acts[fired, f].mean()),
                    "delta_logit_diff": {"all": float(change[fired].mean()),
                                         "ABBA": float(change[fired & abba].mean()) if (fired & abba).any() else None,
                                         "BABA": float(change[fired & ~abba].mean()) if (fired & ~abba).any() else None},
                    "mean_abs_effect": effect, "abba_auc": round(auc, 4),
                    "relevant": effect >= min_effect, "positional": abs(auc - 0.5) >= positional_auc_margin})
    out.sort(key=lambda e: -e["mean_abs_effect"])
    return IOIResult(split, out, min_effect)
