"""Write a tiny Gemma 3 model as a GGUF file, laid out as llama.cpp's converter writes one (tensor
names from the ``gguf`` package's name map, RMSNorm weights stored as ``1 + weight``, F32 tensors,
a SentencePiece-style vocabulary), so the GGUF loading path is tested without the real model."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]
CHARS = ["▁", *"abcdefghijklmnopqrstuvwxyz", *"0123456789", *".,'!?"]
WORDS = ["▁the", "▁cat", "▁sat", "▁on", "▁mat", "▁and", "▁dog", "▁ran", "▁to", "▁a", "▁Mary", "▁John", "▁gave",
         "▁drink", "▁store", "▁went", "▁when", "▁it", "▁was", "▁is"]
VOCAB = SPECIALS + WORDS + CHARS
VOCAB += [f"▁x{i}" for i in range(97 - len(VOCAB))]
#: config fields a GGUF file of this architecture cannot carry: the tiny model must use the values
#: transformers' GGUF loader assumes for Gemma 3 (query_pre_attn_scalar 256, a global layer every 6th)
GGUF_GEMMA3_OVERRIDES = {"query_pre_attn_scalar": 256, "rms_norm_eps": 9.999999974752427e-07,
                         "layer_types": ["sliding_attention"] * 3, "bos_token_id": 2, "pad_token_id": 0}


def write_tiny_gemma3_gguf(model, path: str | Path, architecture: str = "gemma3") -> Path:
    """``model``: a tiny ``Gemma3ForCausalLM``, ``tiny_model("gemma3", **GGUF_GEMMA3_OVERRIDES)``."""
    import gguf

    cfg = model.config
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("tiny gemma3")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_key_length(cfg.head_dim)
    writer.add_value_length(cfg.head_dim)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(cfg.rope_parameters["full_attention"]["rope_theta"])
    writer.add_sliding_window(cfg.sliding_window)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(VOCAB)
    writer.add_token_scores([0.0] * 4 + [-float(len(t)) for t in VOCAB[4:]])
    writer.add_token_types([3, 3, 3, 2] + [1] * (len(VOCAB) - 4))
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(True)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, cfg.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight":
            continue  # tied to the embeddings
        name = names.get_name(hf_name, try_suffixes=(".weight",))
        data = tensor.detach().float().numpy().copy()
        if hf_name.endswith("norm.weight"):
            data = data + 1.0
        writer.add_tensor(name, data.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)
