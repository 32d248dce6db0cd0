"""Model loading and per-family hook adapters with TransformerLens hook names.

Public API::

    lm = load_model("toy" | "/path/to/hf_folder" | "EleutherAI/pythia-70m", device="cpu", dtype=torch.float32)
    lm = LoadedModel.from_hf(model, tokenizer)         # an already-built PreTrainedModel
    lm.n_layers, lm.d_model, lm.n_heads, lm.n_kv_heads, lm.d_head, lm.d_vocab, lm.d_mlp, lm.device
    lm.hook_names(); lm.hook_shape(name); lm.hook_d_in(name)
    logits, cache = lm.run_with_cache(input_ids, hooks, stop_at_layer=None | "auto" | int, attention_mask=None)
    logits = lm.run_with_hooks(input_ids, {name: fn})   # fn(value) -> replacement | None
    with lm.hooks(edits=..., capture=...) as session: lm.model.generate(...)
    lm.W_Q(L), lm.W_K(L), lm.W_V(L) [n_heads, d_model, d_head]; lm.W_O(L) [n_heads, d_head, d_model]
    lm.b_Q(L), lm.b_K(L), lm.b_V(L) [n_heads, d_head]; lm.b_O(L) [d_model]
    lm.W_U [d_model, d_vocab], lm.b_U, lm.W_E, lm.final_norm, lm.norm(which, L), lm.fold_layer_norm(...)

Families: GPT-2, GPT-NeoX (Pythia), Llama (also Mistral and Qwen2), Gemma, Gemma 2. Hook names and
shapes: ``saelab.models.hook_points``.
"""

from saelab.models.adapters import SUPPORTED_MODEL_TYPES, UnsupportedModelError
from saelab.models.hook_points import HOOK_KINDS, HookPoint, UnknownHookError, parse_hook_name
from saelab.models.loaded import LoadedModel
from saelab.models.loading import load_model

__all__ = ["HOOK_KINDS", "HookPoint", "LoadedModel", "SUPPORTED_MODEL_TYPES", "UnknownHookError",
           "UnsupportedModelError", "load_model", "parse_hook_name"]
