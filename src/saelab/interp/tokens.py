"""Readable strings for token ids (for tables, examples and prompts)."""

from __future__ import annotations

from collections.abc import Iterable

from saelab.models import LoadedModel


class TokenNames:
    """``names(ids) -> list[str]``: each id decoded on its own (cached); ``<id>`` without a tokenizer,
    special tokens by their own spelling (``<bos>``)."""

    def __init__(self, lm: LoadedModel):
        self.tokenizer = lm.tokenizer
        self.cache: dict[int, str] = {}

    def name(self, token_id: int) -> str:
        token_id = int(token_id)
        if token_id not in self.cache:
            if self.tokenizer is None:
                text = f"<{token_id}>"
            else:
                text = self.tokenizer.decode([token_id], skip_special_tokens=False)
                if text == "":
                    text = str(self.tokenizer.convert_ids_to_tokens(token_id))
            self.cache[token_id] = text
        return self.cache[token_id]

    def names(self, ids: Iterable[int]) -> list[str]:
        return [self.name(i) for i in ids]
