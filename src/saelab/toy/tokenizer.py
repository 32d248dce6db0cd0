"""The toy world's word-level tokenizer and the rule that renders word lists as text.

Pre-tokenization splits on whitespace, isolates each punctuation character and cuts digit runs
into pairs, so ``render_text(words)`` always tokenizes back into exactly ``words`` (one token per
word): ``"from the year 1732 to"`` -> ``from | the | year | 17 | 32 | to``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

from saelab.fileio import atomic_write_json
from saelab.toy.vocabulary import ALL_WORDS, BOS, EOS, PAD, SPECIAL_TOKENS, UNK

NO_SPACE_BEFORE = frozenset({".", ",", ":", "(", ")"})
NO_SPACE_AFTER = frozenset({"("})


def default_separators(words: Sequence[str]) -> list[str]:
    """The string written before each word: ``""`` at the start, after ``(`` and before ``.,:()``,
    else one space."""
    seps = []
    for i, word in enumerate(words):
        if i == 0 or word in NO_SPACE_BEFORE or words[i - 1] in NO_SPACE_AFTER:
            seps.append("")
        else:
            seps.append(" ")
    return seps


def render_text(words: Sequence[str], seps: Sequence[str | None] | None = None) -> str:
    """Join ``words`` into text. ``seps[i]``, when not None, is written before word ``i`` instead of
    the default (e.g. ``""`` between the halves of a year, ``"\\n    "`` in a docstring).

    Separators must be whitespace or empty; an empty one may only join words that the
    pre-tokenizer splits anyway (punctuation, digit pairs)."""
    chosen = default_separators(words)
    if seps is not None:
        chosen = [d if s is None else s for d, s in zip(chosen, seps, strict=True)]
    return "".join(sep + word for sep, word in zip(chosen, words, strict=True))


def build_tokenizer() -> Tokenizer:
    """A WordLevel ``tokenizers.Tokenizer`` over ``ALL_WORDS`` (ids in that order)."""
    vocab = {word: i for i, word in enumerate(ALL_WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Punctuation("isolated"),
        pre_tokenizers.Split(Regex(r"\d\d"), "isolated"),
    ])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


def build_hf_tokenizer():
    """The same tokenizer wrapped as ``transformers.PreTrainedTokenizerFast`` with BOS/EOS/PAD/UNK.

    It adds no special tokens by itself; the toy model was trained with ``<bos>`` first, so
    prepend ``tokenizer.bos_token_id`` to every sequence.
    """
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=build_tokenizer(),
        bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        model_max_length=128,
    )


def save_tokenizer(out_dir: str | Path, model_max_length: int = 128) -> None:
    """Write tokenizer.json and tokenizer_config.json (as ``save_pretrained`` does) into ``out_dir``.

    The config names the class ``PreTrainedTokenizerFast``, which every transformers version since 4.x
    resolves (5.x alone would write its own ``TokenizersBackend``)."""
    tokenizer = build_hf_tokenizer()
    tokenizer.model_max_length = model_max_length
    tokenizer.save_pretrained(str(out_dir))
    config_path = Path(out_dir) / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    atomic_write_json(config_path, config)
