"""Sparse autoencoders: one module per architecture over a shared base, and SAE folders.

    from saelab.sae import SAEConfig, make_sae, save_sae, load_sae
    sae = make_sae(SAEConfig("topk", d_in=768, d_sae=24576, k=32, hook_name="blocks.5.hook_resid_post"))
    acts = sae.encode(x)            # [..., d_sae]
    x_hat = sae.decode(acts)        # [..., d_in]
    out = sae(x)                    # training pass: out.x_hat, out.acts, out.losses, out.loss
"""

from saelab.sae.base import SAE, InputShapeError, SAEOutput
from saelab.sae.batchtopk import BatchTopKSAE
from saelab.sae.config import ARCHITECTURES, SAEConfig
from saelab.sae.folder import load_sae, load_sae_with_info, save_sae
from saelab.sae.gated import GatedSAE
from saelab.sae.jumprelu import JumpReLUSAE
from saelab.sae.registry import SAE_CLASSES, make_sae, sae_class
from saelab.sae.relu import ReLUSAE
from saelab.sae.tied import TiedSAE
from saelab.sae.topk import TopKSAE

__all__ = [
    "ARCHITECTURES", "SAE", "SAE_CLASSES", "BatchTopKSAE", "GatedSAE", "InputShapeError", "JumpReLUSAE",
    "ReLUSAE", "SAEConfig", "SAEOutput", "TiedSAE", "TopKSAE", "load_sae", "load_sae_with_info",
    "make_sae", "sae_class", "save_sae",
]
