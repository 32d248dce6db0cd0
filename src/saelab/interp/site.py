"""Reading an SAE's input site from a model: the hook's activations flattened per token, and the
latents the SAE assigns them, with special tokens (BOS/EOS/PAD) zeroed."""

from __future__ import annotations

import numpy as np
import torch

from saelab.errors import SaelabError
from saelab.models import LoadedModel
from saelab.sae import SAE


class SiteMismatchError(SaelabError):
    """The SAE's input width does not match the model's hook."""


def check_site(lm: LoadedModel, sae: SAE, hook: str) -> None:
    """Refuse an SAE whose ``d_in`` differs from the hook's flattened width."""
    width = lm.hook_d_in(hook)
    if width != sae.cfg.d_in:
        raise SiteMismatchError(f"SAE d_in={sae.cfg.d_in} does not match hook {hook!r} of {lm.name} "
                                f"(width {width}); pass the model this SAE was trained on")


@torch.no_grad()
def encode_windows(lm: LoadedModel, sae: SAE, hook: str, windows: np.ndarray | torch.Tensor,
                   exclude_special_tokens: bool = True) -> torch.Tensor:
    """Latents ``[batch, pos, d_sae]`` (float32, CPU) of token windows ``[batch, pos]``; zero at special
    tokens when ``exclude_special_tokens``."""
    ids = lm.as_input_ids(windows)
    _, cache = lm.run_with_cache(ids, [hook], stop_at_layer="auto")
    x = cache[hook]
    x = x.reshape(*x.shape[:2], -1)
    param = next(sae.parameters())
    acts = sae.encode(x.to(device=param.device, dtype=param.dtype)).float().cpu()
    if exclude_special_tokens:
        special = torch.as_tensor(np.isin(ids.cpu().numpy(), lm.special_token_ids))
        acts[special] = 0.0
    return acts
