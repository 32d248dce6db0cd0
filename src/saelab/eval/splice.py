"""The splicing names ``saelab.eval`` and older scripts import from here; they live in ``saelab.splicing``."""

from saelab.splicing import (
    Replacement,
    SAEModelMismatchError,
    check_sae_fits,
    flat_per_token,
    mean_replacement,
    ordinary_token_mask,
    sae_replacement,
    sae_with_error_replacement,
    splice_edit,
    spliced_logits,
    zero_replacement,
)

__all__ = [
    "Replacement", "SAEModelMismatchError", "check_sae_fits", "flat_per_token", "mean_replacement",
    "ordinary_token_mask", "sae_replacement", "sae_with_error_replacement", "splice_edit", "spliced_logits",
    "zero_replacement",
]
