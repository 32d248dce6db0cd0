"""Embedding scoring (Paulo et al. 2024, arXiv 2410.13928): the explanation as a query, the held-out
examples as documents; score = ROC AUC of ``cosine(embed(explanation), embed(example))`` between
activating (positives) and non-activating examples (negatives). 1: every activating example is
closer to the explanation than every silent one; 0.5: the explanation does not tell them apart.

Embedders are pluggable: anything with a ``name`` and ``embed(texts) -> [n, d]`` array. Two ship:

- ``TfidfEmbedder`` (``"tfidf"``, the offline default): a bag-of-words TF-IDF (scikit-learn), fitted
  on the texts of each call, so it measures word overlap weighted by rarity among those texts. Not a
  neural embedding: synonyms and paraphrases score 0.
- ``WordLlamaEmbedder`` (``"wordllama"``): WordLlama's static token embeddings (256-d ``l2_supercat``,
  average-pooled), whose weights ship inside the ``wordllama`` PyPI package, so it runs offline.
  Needs ``pip install wordllama``. A sentence-transformer would be the stronger neural option where a
  model hub is reachable (delphi uses one); any such model plugs in as an ``Embedder``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from saelab.errors import ConfigError, check_choice
from saelab.interp.gather import Example
from saelab.interp.prompts import render
from saelab.interp.scoring import check_explanation, roc_auc

EMBEDDERS = ("tfidf", "wordllama")


class Embedder(Protocol):
    """Texts to vectors: ``embed(texts) -> [n_texts, d]`` (any scale; scorers normalise)."""

    name: str

    def embed(self, texts: list[str]) -> np.ndarray: ...


class TfidfEmbedder:
    """Bag-of-words TF-IDF over word tokens (``\\w+``, lower-cased, one-character words kept), fitted
    on the texts of each ``embed`` call (smoothed idf, sublinear tf). Offline and dependency-free beyond
    scikit-learn; rows of texts without a word are zero."""

    name = "tfidf"

    def embed(self, texts: list[str]) -> np.ndarray:
        from sklearn.feature_extraction.text import TfidfVectorizer

        vectorizer = TfidfVectorizer(lowercase=True, token_pattern=r"(?u)\b\w+\b", sublinear_tf=True)
        try:
            return vectorizer.fit_transform(texts).toarray()
        except ValueError:  # no word in any text: nothing to compare
            return np.zeros((len(texts), 1))


class WordLlamaEmbedder:
    """WordLlama ``l2_supercat`` (256-d) from the files inside the installed ``wordllama`` package
    (its own loader fetches the tokenizer from a model hub even though the wheel carries it)."""

    name = "wordllama-l2_supercat-256"

    def __init__(self) -> None:
        try:
            import wordllama
            from safetensors import safe_open
            from tokenizers import Tokenizer
            from wordllama.inference import WordLlamaInference
        except ImportError:
            raise ConfigError("embedder 'wordllama' needs the wordllama package (its weights ship inside it): "
                              "pip install wordllama, or use embedder 'tfidf'") from None
        root = Path(wordllama.__file__).parent
        weights, tokenizer = root / "weights" / "l2_supercat_256.safetensors", root / "tokenizers" / \
            "l2_supercat_tokenizer_config.json"
        if not weights.is_file() or not tokenizer.is_file():
            raise ConfigError(f"the installed wordllama package ({root}) lacks its bundled l2_supercat files "
                              f"({weights.name}, {tokenizer.name}); reinstall wordllama or use embedder 'tfidf'")
        with safe_open(str(weights), framework="np") as f:
            table = f.get_tensor("embedding.weight")
        self.model = WordLlamaInference(table, Tokenizer.from_file(str(tokenizer)))

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.model.embed(list(texts), norm=True), dtype=np.float64)


def make_embedder(name: str) -> Embedder:
    """The embedder called ``name`` (one of ``EMBEDDERS``)."""
    check_choice("embedder", name, EMBEDDERS)
    return TfidfEmbedder() if name == "tfidf" else WordLlamaEmbedder()


def example_text(ex: Example) -> str:
    """An example's tokens as plain text (``saelab.interp.prompts.render``, no marks)."""
    return render(ex.tokens)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """``[n, d]`` rows scaled to unit norm (zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def explanation_similarities(embedder: Embedder, explanation: str, examples: list[Example]) -> np.ndarray:
    """``[n_examples]`` cosine similarity of each example's text to the explanation."""
    check_explanation(explanation)
    vectors = unit_rows(embedder.embed([explanation, *(example_text(ex) for ex in examples)]))
    return vectors[1:] @ vectors[0]


def embedding_score(embedder: Embedder, explanation: str, positives: list[Example],
                    negatives: list[Example]) -> float | None:
    """ROC AUC of the explanation–example cosine, positives against negatives; None when either class
    is empty (no AUC)."""
    sims = explanation_similarities(embedder, explanation, positives + negatives)
    return roc_auc(sims[:len(positives)].tolist(), sims[len(positives):].tolist())
