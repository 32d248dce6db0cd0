"""Text sources, packing into context windows, the activation store and the on-disk cache.

Public API::

    source = open_source("toy" | "toy:SEED" | "hf:NAME[:CONFIG]" | "path.txt|.jsonl|.parquet|.npy|.safetensors",
                         text_column="text")          # or ToySource(seed), JsonlSource(path, column), ...
    store = ActivationStore(lm, source, hooks, StoreConfig(packing=PackingConfig(context_size=128),
                                                           batch_size=4096, seed=0))
    store.normalization_factors                       # {hook: sqrt(E||x||^2)}; batches are x / factor
    for batch in store.iter_batches(start_batch=N):   # {hook: Tensor[batch_size, d_in]}
        ...
    write_activation_cache(lm, source, hooks, out_dir, CacheConfig(n_tokens=...))   # resumable
    cache = ActivationCache(out_dir, batch_size=4096, seed=0)
    for batch in cache.iter_batches(start_batch=N): ...

``d_in`` is the hook's value flattened per token: ``n_heads * d_head`` for ``attn.hook_z``.
Special tokens (BOS/EOS/PAD) are excluded by default. See each module for details.
"""

from saelab.data.cache import ActivationCache, CacheConfig, read_manifest, write_activation_cache
from saelab.data.packing import PackingConfig, iter_windows, pack_windows, special_token_mask
from saelab.data.sources import (
    HFDatasetSource,
    JsonlSource,
    MissingColumnError,
    ParquetSource,
    Source,
    TextFileSource,
    TokenArraySource,
    ToySource,
    open_source,
)
from saelab.data.store import ActivationStore, StoreConfig, TextSpec

__all__ = [
    "ActivationCache", "ActivationStore", "CacheConfig", "HFDatasetSource", "JsonlSource", "MissingColumnError",
    "PackingConfig", "ParquetSource", "Source", "StoreConfig", "TextFileSource", "TextSpec", "TokenArraySource",
    "ToySource", "iter_windows", "open_source", "pack_windows", "read_manifest", "special_token_mask", "write_activation_cache",
]
