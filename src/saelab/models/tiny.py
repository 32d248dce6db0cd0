"""Tiny randomly initialised models of every supported family, for tests (no downloads).

``tiny_model(family)`` builds a 3-block model with d_model 32 from a config, then perturbs its norm
weights and biases so that they are not the identity (folding and decomposition tests would
otherwise pass vacuously). Llama-layout models use grouped-query attention; Mistral and Gemma 2
use a sliding window shorter than typical test sequences; Gemma 2 keeps its logit soft-caps; Gemma 3
alternates sliding and global layers with one key/value head and q/k norms, as Gemma 3 270M does, and
``gemma3_multimodal`` wraps the same decoder in ``Gemma3ForConditionalGeneration`` with a one-layer
vision tower.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from saelab.errors import check_choice

TINY_FAMILIES: tuple[str, ...] = (
    "gpt2", "gpt_neox", "gpt_neox_sequential", "llama", "mistral", "qwen2", "gemma", "gemma2", "gemma3",
    "gemma3_multimodal",
)


def tiny_config(family: str, *, vocab_size: int = 97, n_layers: int = 3, n_ctx: int = 64):
    """The config of ``tiny_model(family)``."""
    import transformers as T

    check_choice("family", family, TINY_FAMILIES)
    common = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=n_layers, num_attention_heads=4,
                  intermediate_size=48, max_position_embeddings=n_ctx, bos_token_id=0, eos_token_id=1,
                  pad_token_id=2)
    if family == "gpt2":
        return T.GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=n_layers, n_head=4, n_positions=n_ctx,
                            n_inner=48, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    if family in ("gpt_neox", "gpt_neox_sequential"):
        return T.GPTNeoXConfig(**common, use_parallel_residual=family == "gpt_neox", rotary_pct=0.5)
    if family == "llama":
        return T.LlamaConfig(**common, num_key_value_heads=2)
    if family == "mistral":
        return T.MistralConfig(**common, num_key_value_heads=2, sliding_window=6)
    if family == "qwen2":
        return T.Qwen2Config(**common, num_key_value_heads=2)
    if family == "gemma":
        return T.GemmaConfig(**common, num_key_value_heads=1, head_dim=16)
    if family == "gemma2":
        return T.Gemma2Config(**common, num_key_value_heads=2, head_dim=8, sliding_window=6, query_pre_attn_scalar=8)
    layer_types = ["sliding_attention" if (i + 1) % 3 else "full_attention" for i in range(n_layers)]
    text = T.Gemma3TextConfig(**common, num_key_value_heads=1, head_dim=16, sliding_window=6,
                              query_pre_attn_scalar=16, layer_types=layer_types)
    if family == "gemma3":
        return text
    vision = T.SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  image_size=28, patch_size=14)
    return T.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                          image_token_index=vocab_size - 1, boi_token_index=vocab_size - 3,
                          eoi_token_index=vocab_size - 2)


def tiny_model(family: str, *, seed: int = 0, attn_implementation: str | None = None, vocab_size: int = 97,
               n_layers: int = 3, n_ctx: int = 64, **config_overrides):
    """A randomly initialised ``*ForCausalLM`` of ``family`` (see ``TINY_FAMILIES``) in eval mode.
    ``attn_implementation`` defaults to ``sdpa`` (``eager`` for Gemma 2, which has no sdpa path);
    ``config_overrides`` replace config fields (e.g. ``query_pre_attn_scalar=256``)."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(family, vocab_size=vocab_size, n_layers=n_layers, n_ctx=n_ctx)
    for key, value in config_overrides.items():
        if not hasattr(config, key):
            raise AttributeError(f"{type(config).__name__} has no field {key!r}")
        setattr(config, key, value)
    config._attn_implementation = attn_implementation or ("eager" if family == "gemma2" else "sdpa")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=config._attn_implementation)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or ".ln" in name or name.endswith("bias"):
                param.add_(0.2 * torch.randn(param.shape, generator=generator))
    return model.eval()


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads (tiny models run fastest on one thread,
    especially on a shared machine), then restore the previous setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
