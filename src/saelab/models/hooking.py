"""A set of installed hooks: edits, captures and an early stop, as a context manager.

Within one hook point, edit functions run first (in the order given) and captures record the value
the model actually uses afterwards. Points are installed in forward order, so an edit of
``hook_attn_out`` is visible to ``hook_resid_mid`` of the same block.

Stopping raises ``StopForward`` from a pre-hook on block ``stop_at_layer`` (or on the final norm
when ``stop_at_layer == n_layers``), after every hook up to there has run; callers catch it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch

from saelab.errors import SaelabError
from saelab.models import hook_points as H
from saelab.models.adapters import Adapter

EditFn = Callable[[torch.Tensor], "torch.Tensor | None"]

#: hook kind -> when it fires within a block. In GPT-NeoX's parallel layout the MLP's norm reads
#: resid_pre, yet Hugging Face runs it after attention, so ``hook_mlp_in``/``ln2.hook_normalized``
#: come after ``hook_resid_mid`` there too (an edit of resid_pre reaches them; one of resid_mid does not).
FORWARD_ORDER = {kind: i for i, kind in enumerate((
    H.RESID_PRE, H.LN1_NORMALIZED, H.ATTN_Q, H.ATTN_K, H.ATTN_V, H.ATTN_PATTERN, H.ATTN_Z, H.ATTN_OUT,
    H.RESID_MID, H.MLP_IN, H.LN2_NORMALIZED, H.MLP_POST, H.MLP_OUT, H.RESID_POST,
))}


class StopForward(Exception):
    """Raised inside the forward pass once every requested hook has run."""


class HookSession:
    """Hooks installed on ``adapter.model`` while the ``with`` block runs.

    ``edits``: hook name -> function of the value (TransformerLens shape) returning a replacement
    or None (None keeps the value, including in-place changes). ``capture``: hook names whose values
    are stored in ``self.cache`` (detached unless ``detach=False``; a hook that fires several times,
    e.g. during ``generate``, keeps its last value). ``stop_at_layer``: see module docstring.
    """

    def __init__(self, adapter: Adapter, *, edits: Mapping[str, EditFn] | None = None,
                 capture: Iterable[str] | None = None, stop_at_layer: int | None = None,
                 detach: bool = True, model_name: str = "this model"):
        self.adapter = adapter
        self.edits = {H.parse_hook_name(name, adapter.n_layers, model_name): fn for name, fn in (edits or {}).items()}
        for point, fn in self.edits.items():
            if not callable(fn):
                raise SaelabError(f"the edit for hook {point.name!r} is {type(fn).__name__}, not a function")
        capture = list(capture or [])
        self.capture = H.parse_hook_list(capture, adapter.n_layers, model_name) if capture else []
        self.stop_at_layer = stop_at_layer
        self.detach = detach
        self.cache: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def _recorder(self, name: str) -> EditFn:
        def record(value: torch.Tensor) -> None:
            self.cache[name] = value.detach() if self.detach else value

        return record

    def __enter__(self) -> HookSession:
        plan = [((p.layer, FORWARD_ORDER[p.kind], 0), p, fn, False) for p, fn in self.edits.items()]
        plan += [((p.layer, FORWARD_ORDER[p.kind], 1), p, self._recorder(p.name), True) for p in self.capture]
        plan.sort(key=lambda item: item[0])
        try:
            for _, point, fn, read_only in plan:
                self._handles += self.adapter.site(point).install(point.name, fn, read_only)
            if self.stop_at_layer is not None:
                self._handles.append(self._install_stop(self.stop_at_layer))
        except BaseException:
            self._remove()
            raise
        return self

    def _install_stop(self, layer: int):
        adapter = self.adapter
        module = adapter.blocks()[layer] if layer < adapter.n_layers else adapter.final_norm_module()

        def stop(module, args, kwargs):
            raise StopForward

        return module.register_forward_pre_hook(stop, with_kwargs=True)

    def _remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def __exit__(self, *exc) -> None:
        self._remove()
