"""Feature absorption on the first-letter task (Chanin et al. 2024, "A is for Absorption", arXiv
2409.14507), with the absorption fraction and full-absorption rate of SAEBench's absorption eval.

    result = absorption(sae, lm)                                  # toy documents by default
    result = absorption(sae, lm, first_letter_data(lm, texts), AbsorptionConfig(split="word"))
    result.mean_absorption_fraction, result.mean_full_absorption, result.notes, result.to_dict()

Data (``saelab.eval.concepts.first_letter_data``): occurrences of single-token whole words in text,
each read at the word's token; label = its lowercased first letter. SAEBench reads each vocabulary
word in an in-context prompt (``"{word} has the first letter:"``) instead; words in running text work
for any model, including the word-level toy one. Split (``split``): ``"word"`` (the published one:
the distinct words of each letter are split ``train_fraction`` / rest, so every test word is unseen)
or ``"occurrence"`` (occurrences split, so test words were seen: a memorising probe passes).

Per letter L, one-vs-rest:

1. Ground-truth probe: logistic regression on the activations ``x`` at the SAE's hook (positives
   weighted n_neg/n_pos, L2 ``probe_l2`` per example as SAEBench's Adam weight decay 1e-4:
   scikit-learn ``C = 1 / (n_train · probe_l2)``), fitted on standardised inputs and expressed on
   raw ones (SAEBench fits raw inputs). Probe direction p̂ = w/‖w‖; a test example is a
   *probe true positive* when its letter is L and x·w + b > 0. ``probe_f1``: F1 of x·w + b > 0 on the test split.
2. Main latents (SAEBench's k-sparse probing): an L1 logistic regression on the latents ``z`` of
   the training split (``C = 1 / (n_train · l1_decay)``, liblinear, positives weighted) ranks the
   latents by weight; for k = 1..``max_k`` a logistic regression (class-balanced) on the top k gives
   a test F1; k grows while the F1 rises by more than ``f1_jump_threshold`` (0.03); the main latents are
   the top k at the last rise (feature splitting when k > 1).
3. Per probe true positive, with a_i the latent activations, c_i = cos(W_dec[i], p̂) (decoder rows,
   as published) and the latent's projection onto the probe P_i = a_i · (W_dec[i] · p̂) (= a_i c_i for
   unit-norm decoder rows, SAEBench's formula, and the latent's actual share of the reconstruction's
   projection otherwise); P = x · p̂; M = Σ_{main} P_i;
   A = the sum of the ``max_absorbing_latents`` (3) largest P_i > 0 over non-main latents with
   c_i ≥ ``absorption_fraction_cos_threshold`` (0.1):

   - absorption fraction = 0 if P ≤ 0, M ≥ P or A / P < ``projection_proportion_threshold`` (0.4);
     else 1 if M ≤ 0; else a / (a + M) with a = min(A, P − M), clipped to [0, 1];
   - full absorption: every main latent has a_i < 1e-8, the latent with the largest P_i has
     c_i ≥ ``full_absorption_cos_threshold`` (0.025), P > 0 and that P_i / P ≥ 0.4.

4. Per letter: ``mean_absorption_fraction`` = Σ fraction / #probe true positives,
   ``full_absorption_rate`` = #full / #probe true positives.

A letter is *scored* when ``probe_f1 > min_probe_f1`` (0.6) and it has a probe true positive; the
means (and standard deviations) are over scored letters. SAEBench refuses a model with fewer than
``min_letters`` (20) such letters; here the figures are still given, with a note that the model is too
small (its activations at the hook do not carry first letters linearly), as are letters with
fewer than two distinct words (nothing to test on).
"""

from __future__ import annotations

import warnings
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from saelab.errors import ConfigError, SaelabError, check_choice, check_range
from saelab.eval.concepts import (
    LETTERS,
    ConceptError,
    FirstLetterData,
    first_letter_data,
    toy_texts,
    vocabulary_id,
)
from saelab.eval.probing import encode_latents, example_activations, probe_hook
from saelab.eval.recovery import NotToyModelError, check_toy_vocabulary
from saelab.models import LoadedModel
from saelab.sae.base import SAE
from saelab.toy import vocabulary as V

EPS = 1e-8
SPLITS = ("word", "occurrence")


@dataclass
class AbsorptionConfig:
    """Settings of the absorption eval; thresholds and defaults as SAEBench's (module docstring).
    n_documents: toy documents read when no data is given. batch_size: contexts per forward pass."""

    seed: int = 0
    split: str = "word"
    train_fraction: float = 0.8
    probe_l2: float = 1e-4
    l1_decay: float = 0.01
    max_k: int = 10
    f1_jump_threshold: float = 0.03
    min_probe_f1: float = 0.6
    min_letters: int = 20
    full_absorption_cos_threshold: float = 0.025
    absorption_fraction_cos_threshold: float = 0.1
    projection_proportion_threshold: float = 0.4
    max_absorbing_latents: int = 3
    max_iter: int = 1000
    n_documents: int = 512
    batch_size: int = 32
    progress: bool = True

    def __post_init__(self) -> None:
        check_range("seed", self.seed, 0, None, integer=True)
        check_choice("split", self.split, SPLITS)
        check_range("train_fraction", self.train_fraction, 0, 1, lo_open=True)
        if self.train_fraction >= 1:
            raise ConfigError(f"train_fraction={self.train_fraction!r} leaves no test words; accepted: (0, 1)")
        check_range("probe_l2", self.probe_l2, 0, None, lo_open=True)
        check_range("l1_decay", self.l1_decay, 0, None, lo_open=True)
        check_range("max_k", self.max_k, 1, None, integer=True)
        check_range("f1_jump_threshold", self.f1_jump_threshold, 0, 1)
        check_range("min_probe_f1", self.min_probe_f1, 0, 1)
        check_range("min_letters", self.min_letters, 1, len(LETTERS), integer=True)
        check_range("full_absorption_cos_threshold", self.full_absorption_cos_threshold, -1, 1)
        check_range("absorption_fraction_cos_threshold", self.absorption_fraction_cos_threshold, -1, 1)
        check_range("projection_proportion_threshold", self.projection_proportion_threshold, 0, None)
        check_range("max_absorbing_latents", self.max_absorbing_latents, 1, None, integer=True)
        check_range("max_iter", self.max_iter, 1, None, integer=True)
        check_range("n_documents", self.n_documents, 1, None, integer=True)
        check_range("batch_size", self.batch_size, 1, None, integer=True)

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------- per example
def absorption_scores(z: Tensor, probe_projection: Tensor, decoder_projection: Tensor, cosine: Tensor,
                      main: Sequence[int], config: AbsorptionConfig) -> tuple[Tensor, Tensor, Tensor]:
    """Per example (module docstring, step 3) from latents ``z [n, d_sae]``, P = x·p̂ ``[n]``,
    ``decoder_projection`` W_dec·p̂ ``[d_sae]`` and ``cosine`` cos(W_dec, p̂) ``[d_sae]``: (absorption
    fraction ``[n]``, full absorption ``[n]`` bool, the latent with the largest P_i ``[n]``)."""
    z = z.double()
    total = probe_projection.double()
    proj = z * decoder_projection.double()[None]                        # [n, d_sae] P_i
    is_main = torch.zeros(z.shape[1], dtype=torch.bool)
    is_main[list(main)] = True
    main_proj = proj[:, is_main].sum(1)                                 # M
    candidate = (~is_main & (cosine >= config.absorption_fraction_cos_threshold))[None] & (proj > 0)
    top = torch.where(candidate, proj, torch.zeros_like(proj))
    absorbing = top.topk(min(config.max_absorbing_latents, z.shape[1]), dim=1).values.sum(1)   # A
    safe_total = torch.where(total > 0, total, torch.ones_like(total))
    share = torch.minimum(absorbing, total - main_proj)
    partial = (share / (share + main_proj).clamp_min(EPS)).clamp(0, 1)
    fraction = torch.where(main_proj <= 0, torch.ones_like(total), partial)
    none = (total <= 0) | (main_proj >= total) | (absorbing / safe_total < config.projection_proportion_threshold)
    fraction = torch.where(none, torch.zeros_like(total), fraction)
    best = proj.argmax(1)
    best_proj = proj.gather(1, best[:, None]).squeeze(1)
    main_silent = (z[:, is_main] < EPS).all(1) if is_main.any() else torch.ones(len(z), dtype=torch.bool)
    full = (main_silent & (cosine[best] >= config.full_absorption_cos_threshold) & (total > 0)
            & (best_proj / safe_total >= config.projection_proportion_threshold))
    return fraction.float(), full, best


# ----------------------------------------------------------------------------------- probes
def _weights(y: np.ndarray) -> dict[int, float]:
    n_pos = max(int(y.sum()), 1)
    return {0: 1.0, 1: (len(y) - n_pos) / n_pos}


def _f1(pred: np.ndarray, y: np.ndarray) -> float:
    tp = float((pred & y).sum())
    denom = float(pred.sum() + y.sum())
    return 2 * tp / denom if denom else 0.0


def ground_truth_probe(x: Tensor, y: Tensor, config: AbsorptionConfig) -> tuple[Tensor, float]:
    """(w ``[d_in]``, b) of the letter probe on raw activations ``x [n, d_in]`` (step 1), fitted on
    standardised inputs (lbfgs converges in a few dozen steps instead of stalling on raw residual
    scales) and mapped back: the probe reads raw activations, x·w + b."""
    from sklearn.linear_model import LogisticRegression

    a = x.double().numpy()
    mean, std = a.mean(0), a.std(0)
    std[std == 0] = 1.0
    yy = y.numpy().astype(np.int64)
    probe = _fit(LogisticRegression(C=1.0 / (len(yy) * config.probe_l2), class_weight=_weights(yy),
                                    max_iter=config.max_iter), (a - mean) / std, yy)
    w = probe.coef_[0] / std
    return torch.from_numpy(w).float(), float(probe.intercept_[0] - w @ mean)


def _fit(model, a, y):
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(a, y)


def main_latents(z_train: Tensor, y_train: Tensor, z_test: Tensor, y_test: Tensor,
                 config: AbsorptionConfig) -> tuple[list[int], list[float]]:
    """(main latents, test F1 per k = 1..max_k) by k-sparse probing with the F1-jump rule (step 2)."""
    import sklearn
    from scipy.sparse import csr_matrix
    from sklearn.linear_model import LogisticRegression

    yt, ye = y_train.numpy().astype(np.int64), y_test.numpy().astype(bool)
    version = tuple(int(p) for p in sklearn.__version__.split(".")[:2] if p.isdigit())
    l1_penalty = {"l1_ratio": 1.0} if version >= (1, 8) else {"penalty": "l1"}  # 'penalty' is deprecated in 1.8
    l1 = _fit(LogisticRegression(solver="liblinear", C=1.0 / (len(yt) * config.l1_decay), class_weight=_weights(yt),
                                 max_iter=config.max_iter, random_state=0, **l1_penalty),
              csr_matrix(z_train.numpy()), yt)
    order = np.argsort(-l1.coef_[0], kind="stable")
    f1s: list[float] = []
    main: list[int] = []
    best = -np.inf
    for k in range(1, min(config.max_k, z_train.shape[1]) + 1):
        chosen = order[:k]
        probe = _fit(LogisticRegression(max_iter=500, class_weight="balanced"), z_train.numpy()[:, chosen], yt)
        f1 = _f1(probe.decision_function(z_test.numpy()[:, chosen]) > 0, ye)
        f1s.append(f1)
        if f1 > best + config.f1_jump_threshold:
            best, main = f1, [int(i) for i in chosen]
        else:
            break
    return main, f1s


# ----------------------------------------------------------------------------------- results
@dataclass
class LetterAbsorption:
    """One letter's figures (see the module docstring); ``top_absorbers``: the latents most often
    the largest projection in full-absorption cases, as ``[latent, count]``."""

    letter: str
    n_train_words: int
    n_test_words: int
    n_test_examples: int
    probe_f1: float
    probe_true_positives: int
    main_latents: list[int]
    main_latent_f1: list[float]
    mean_absorption_fraction: float | None
    full_absorption_rate: float | None
    n_full_absorption: int
    scored: bool
    top_absorbers: list[list[int]] = field(default_factory=list)

    @property
    def num_split_features(self) -> int:
        return len(self.main_latents)

    def to_dict(self) -> dict:
        return {**asdict(self), "num_split_features": self.num_split_features}


@dataclass
class AbsorptionResult:
    """Absorption of one SAE: per-letter rows, means over scored letters, and notes on what could
    not be measured."""

    sae: str
    architecture: str
    hook: str
    model: str
    config: AbsorptionConfig
    letters: list[LetterAbsorption]
    notes: list[str] = field(default_factory=list)

    @property
    def scored(self) -> list[LetterAbsorption]:
        return [r for r in self.letters if r.scored]

    def _stat(self, pick, how) -> float | None:
        values = [pick(r) for r in self.scored]
        if not values or (how is np.std and len(values) < 2):
            return None
        return float(how(values, ddof=1) if how is np.std else how(values))

    @property
    def mean_absorption_fraction(self) -> float | None:
        return self._stat(lambda r: r.mean_absorption_fraction, np.mean)

    @property
    def mean_full_absorption(self) -> float | None:
        return self._stat(lambda r: r.full_absorption_rate, np.mean)

    def summary(self) -> dict:
        """SAEBench's ``mean`` metrics of absorption (``mean_absorption_fraction_score``,
        ``mean_full_absorption_score``, ``mean_num_split_features`` and their ``std_dev_*``, sample
        standard deviations), over scored letters, with ``n_letters_scored``."""
        frac, full = (lambda r: r.mean_absorption_fraction), (lambda r: r.full_absorption_rate)
        split = lambda r: r.num_split_features  # noqa: E731
        return {"mean_absorption_fraction_score": self._stat(frac, np.mean),
                "mean_full_absorption_score": self._stat(full, np.mean),
                "mean_num_split_features": self._stat(split, np.mean),
                "std_dev_absorption_fraction_score": self._stat(frac, np.std),
                "std_dev_full_absorption_score": self._stat(full, np.std),
                "std_dev_num_split_features": self._stat(split, np.std),
                "n_letters_scored": len(self.scored), "n_letters": len(self.letters)}

    def saebench_details(self) -> list[dict]:
        """SAEBench's ``eval_result_details`` rows (``AbsorptionResultDetail``), scored letters only."""
        return [{"first_letter": r.letter, "mean_absorption_fraction": r.mean_absorption_fraction,
                 "full_absorption_rate": r.full_absorption_rate, "num_full_absorption": r.n_full_absorption,
                 "num_probe_true_positives": r.probe_true_positives, "num_split_features": r.num_split_features}
                for r in self.scored]

    def to_dict(self) -> dict:
        return {"sae": self.sae, "architecture": self.architecture, "hook": self.hook, "model": self.model,
                "config": self.config.to_dict(), "summary": self.summary(),
                "letters": [r.to_dict() for r in self.letters], "saebench_details": self.saebench_details(),
                "notes": list(self.notes)}


# ----------------------------------------------------------------------------------- splits
def word_split(letters: Tensor, words: Tensor, train_fraction: float, seed: int, by: str = "word") -> Tensor:
    """``[n]`` bool, True for training examples. ``by="word"``: per letter, ``round(train_fraction ·
    n_words)`` of its distinct ``words`` (token ids) train (at least one and, with two or more words,
    at least one left to test); ``"occurrence"``: the same over occurrences."""
    check_choice("split", by, SPLITS)
    train = torch.zeros(len(letters), dtype=torch.bool)
    for i in letters.unique().tolist():
        where = (letters == i).nonzero().squeeze(1)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(f"absorption:{i}".encode()))
        units = words[where].unique() if by == "word" else torch.arange(len(where))
        n_train = min(max(round(train_fraction * len(units)), 1), max(len(units) - 1, 1))
        chosen = units[torch.randperm(len(units), generator=gen)[:n_train]]
        train[where[torch.isin(words[where], chosen)] if by == "word" else where[chosen]] = True
    return train


# ----------------------------------------------------------------------------------- entry points
def _check_not_transcoder(sae: SAE) -> None:
    if sae.cfg.is_transcoder:
        raise ConfigError(f"absorption compares decoder rows with a probe in the input space, but {sae.cfg.name!r} "
                          "is a transcoder whose decoder writes another hook; evaluate an SAE")


@torch.no_grad()
def absorption_from_activations(sae: SAE, x: Tensor, letters: Tensor, words: Tensor, train: Tensor,
                                config: AbsorptionConfig | None = None, *, hook: str = "", model: str = "",
                                notes: Sequence[str] = ()) -> AbsorptionResult:
    """Absorption of ``sae`` from activations ``x [n, d_in]`` (at the hook it reads), ``letters [n]``
    (index in ``LETTERS``), ``words [n]`` (token ids) and the ``train [n]`` bool split."""
    config = config or AbsorptionConfig()
    _check_not_transcoder(sae)
    if x.shape[1] != sae.cfg.d_in:
        raise SaelabError(f"activations have {x.shape[1]} values per token, SAE {sae.cfg.name!r} reads {sae.cfg.d_in}")
    sae.eval()
    x = x.float()
    z = encode_latents(sae, x)
    decoder = sae.W_dec.detach().float().cpu()                          # [d_sae, d_in]
    test = ~train
    rows: list[LetterAbsorption] = []
    out_notes = list(notes)
    unscorable = []
    for i in tqdm(letters.unique().tolist(), desc=f"absorption {sae.cfg.name}", unit="letter",
                  disable=not config.progress):
        letter = LETTERS[i]
        y = letters == i
        n_train_words = int(words[y & train].unique().numel())
        n_test_words = int(words[y & test].unique().numel())
        if not (y & test).any() or not (y & train).any() or y.all():
            unscorable.append(letter)
            continue
        w, b = ground_truth_probe(x[train], y[train], config)
        scores = x[test] @ w + b
        y_te = y[test]
        probe_f1 = _f1((scores > 0).numpy(), y_te.numpy())
        main, f1s = main_latents(z[train], y[train], z[test], y_te, config)
        direction = w / w.norm().clamp_min(EPS)
        tp = test.nonzero().squeeze(1)[(y_te & (scores > 0))]
        decoder_projection = decoder @ direction
        cosine = decoder_projection / decoder.norm(dim=1).clamp_min(EPS)
        fraction, full, best = absorption_scores(z[tp], x[tp] @ direction, decoder_projection, cosine, main, config)
        n_tp = len(tp)
        absorbers = Counter(best[full].tolist()).most_common(5)
        rows.append(LetterAbsorption(
            letter, n_train_words, n_test_words, int(y_te.sum()), probe_f1, n_tp, main, f1s,
            float(fraction.sum()) / n_tp if n_tp else None, float(full.sum()) / n_tp if n_tp else None,
            int(full.sum()), bool(probe_f1 > config.min_probe_f1 and n_tp > 0),
            [[int(a), int(c)] for a, c in absorbers]))
    if unscorable:
        out_notes.append(f"letters {', '.join(unscorable)} have too few distinct words to train and test a probe "
                         "(needs one of each split): not scored")
    weak = [r.letter for r in rows if not r.scored]
    if weak:
        out_notes.append(f"letters {', '.join(weak)}: the ground-truth probe's test F1 is at most "
                         f"min_probe_f1={config.min_probe_f1} (or it finds no true positive): not scored")
    n_scored = sum(r.scored for r in rows)
    if n_scored < config.min_letters:
        out_notes.append(
            f"only {n_scored} letters have a ground-truth probe with test F1 > {config.min_probe_f1}; SAEBench needs "
            f"{config.min_letters}: at {hook or 'this hook'} the model is too small to represent first letters "
            f"linearly{' for unseen words' if config.split == 'word' else ''}, so these absorption figures are not "
            "reliable")
    return AbsorptionResult(sae.cfg.name, sae.cfg.architecture, hook, model, config, rows, out_notes)


def absorption(sae: SAE, lm: LoadedModel, data: FirstLetterData | None = None,
               config: AbsorptionConfig | None = None, *, texts: Sequence[str] | None = None,
               activations: Tensor | None = None) -> AbsorptionResult:
    """Absorption of ``sae`` on ``lm`` (see the module docstring) over ``data`` (default:
    ``first_letter_data`` of ``texts``, default the first ``config.n_documents`` held-out toy documents).
    activations: ``[n, d_in]`` the SAE's hook at ``data``'s examples (``example_activations``), when
    several SAEs of one hook share them; read from the model when None."""
    config = config or AbsorptionConfig()
    hook = probe_hook(lm, sae)
    _check_not_transcoder(sae)
    notes = []
    if data is None:
        if texts is None:
            texts = toy_texts(config.n_documents)
            n_words = sum(w.isalpha() for w in V.CONTENT_WORDS)
            notes.append(f"words from {config.n_documents} toy-world documents (its vocabulary holds {n_words} "
                         "alphabetic words; pass texts for more)")
        data = first_letter_data(lm, texts, seed=config.seed)
    if data.vocabulary and data.vocabulary != vocabulary_id(lm):
        raise ConceptError(f"the first-letter data was tokenized for another tokenizer than {lm.name!r}'s; build it "
                           "with first_letter_data(lm, texts) for this model")
    try:
        check_toy_vocabulary(lm)
        notes.append("toy model: its tokenizer is word-level, so every token's first letter is well defined, but the "
                     "model never sees spelling; a first-letter direction can only come from memorised word lists")
    except NotToyModelError:
        pass
    if activations is None:
        x = example_activations(lm, hook, data.input_ids, data.context, data.positions, batch_size=config.batch_size,
                                progress=config.progress)
    elif activations.shape != (len(data.letters), lm.hook_d_in(hook)):
        raise ConceptError(f"activations {tuple(activations.shape)} do not match the first-letter data: expected "
                           f"[{len(data.letters)}, {lm.hook_d_in(hook)}] from example_activations at {hook}")
    else:
        x = activations
    words = data.token_ids
    train = word_split(data.letters, words, config.train_fraction, config.seed, config.split)
    return absorption_from_activations(sae, x, data.letters, words, train, config, hook=hook, model=lm.name,
                                       notes=notes)


def plot_absorption(result: AbsorptionResult, path):
    """Per scored letter: mean absorption fraction and full-absorption rate as bars; returns the PNG
    path (a note in the title when no letter could be scored)."""
    from saelab.plotting import pyplot, save_png

    plt = pyplot()
    rows = result.scored
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(rows) + 2), 3.6))
    positions = np.arange(len(rows))
    ax.bar(positions - 0.2, [r.mean_absorption_fraction for r in rows], width=0.4, label="absorption fraction")
    ax.bar(positions + 0.2, [r.full_absorption_rate for r in rows], width=0.4, label="full absorption rate")
    ax.set_xticks(positions, [r.letter for r in rows])
    ax.set_ylim(0, 1)
    ax.set_xlabel("first letter")
    summary = result.summary()
    if rows:
        title = (f"{result.sae}: mean absorption fraction {summary['mean_absorption_fraction_score']:.3f}, "
                 f"full {summary['mean_full_absorption_score']:.3f} ({len(rows)} letters)")
        ax.legend(fontsize=7)
    else:
        title = f"{result.sae}: no letter could be scored (see notes)"
    ax.set_title(title, fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    return save_png(fig, path)
