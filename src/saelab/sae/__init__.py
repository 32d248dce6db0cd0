"""Sparse autoencoders and transcoders ("coders"): one module per architecture over a shared base,
registered in ``registry``, and SAE folders.

    from saelab.sae import SAEConfig, make_sae, save_sae, load_sae
    sae = make_sae(SAEConfig("topk", d_in=768, d_sae=24576, k=32, hook_name="blocks.5.hook_resid_post"))
    acts = sae.encode(x)            # [..., d_sae]
    x_hat = sae.decode(acts)        # [..., d_in]
    out = sae(x)                    # training pass: out.x_hat, out.acts, out.losses, out.loss
    tc = make_sae(SAEConfig("topk", d_in=768, d_sae=24576, hook_name="blocks.5.hook_resid_mid",
                            hook_name_out="blocks.5.hook_mlp_out", skip_connection=True))
    y_hat = tc.reconstruct(x)       # [..., d_out]; training: tc(x, y)
"""

from saelab.sae.base import SAE, InputShapeError, SAEOutput
from saelab.sae.batchtopk import BatchTopKSAE
from saelab.sae.config import SAEConfig
from saelab.sae.folder import load_sae, load_sae_with_info, save_sae
from saelab.sae.gated import GatedSAE
from saelab.sae.jumprelu import JumpReLUSAE
from saelab.sae.matryoshka import MatryoshkaBatchTopKSAE
from saelab.sae.registry import ARCHITECTURES, SAE_CLASSES, architectures, make_sae, register, sae_class
from saelab.sae.relu import ReLUSAE
from saelab.sae.tied import TiedSAE
from saelab.sae.topk import TopKSAE

__all__ = [
    "ARCHITECTURES", "SAE", "SAE_CLASSES", "BatchTopKSAE", "GatedSAE", "InputShapeError", "JumpReLUSAE",
    "MatryoshkaBatchTopKSAE", "ReLUSAE", "SAEConfig", "SAEOutput", "TiedSAE", "TopKSAE", "architectures",
    "load_sae", "load_sae_with_info", "make_sae", "register", "sae_class", "save_sae",
]
