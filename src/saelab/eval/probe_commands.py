"""``saelab probe`` (k-sparse probing) and ``saelab absorption`` (feature absorption) of SAE folders.

::

    saelab probe --sae DIR [--sae DIR ...] [--model toy] [--concepts toy,first-letter,number,capitalised,code-vs-prose]
        [--ks 1,2,5,20] [--text SPEC] [--code-text SPEC] [--n-per-class 256] [--split context|example] [--seed 0]
        [--json] [--out DIR]
    saelab absorption --sae DIR [--model toy] [--text SPEC] [--split word|occurrence] [--json] [--out DIR]

The model defaults to the one recorded in the (first) SAE folder. Text for the real-text concepts
(``--text``: a .txt/.jsonl file or folder, ``toy:SEED``, ``hf:NAME``): by default
held-out toy documents for a toy-vocabulary model, else ``real/corpus/heldout.txt`` when
``scripts/get_real_corpus.sh`` has made it, else toy documents. ``--out`` writes ``probe.json`` and ``probe_accuracy_vs_k.png`` (``absorption.json`` and
``absorption_by_letter.png``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from saelab.cli_args import add_threads_argument, apply_threads
from saelab.errors import ConfigError

CONCEPT_SETS = ("toy", "code-vs-prose", "first-letter", "number", "capitalised")
REAL_CORPUS = Path("real/corpus/heldout.txt")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="model spec (default: the one recorded in the SAE folder)")
    parser.add_argument("--text", default=None, metavar="SPEC",
                        help="text for the real-text concepts (.txt/.jsonl file or folder, toy:SEED, hf:NAME); default: "
                             f"toy documents for the toy model, else {REAL_CORPUS} if present")
    parser.add_argument("--max-texts", type=int, default=512, help="texts (paragraphs, documents) read (default 512)")
    parser.add_argument("--context-size", type=int, default=None,
                        help="tokens per context (default 128, or the model's context if shorter)")
    parser.add_argument("--seed", type=int, default=0, help="train/test split and sampling seed (default 0)")
    parser.add_argument("--device", default="cpu", help="device of the model and SAEs (default cpu)")
    add_threads_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--out", default=None, help="also write the JSON and a PNG plot into this folder")


def register(subparsers) -> None:
    pr = subparsers.add_parser("probe", help="k-sparse probing of SAE latents on binary concepts "
                                             "(SAEBench / Gao et al.)")
    pr.add_argument("--sae", action="append", required=True, metavar="DIR",
                    help="SAE folder (repeat for several SAEs of one model)")
    pr.add_argument("--concepts", default=None,
                    help=f"comma-separated concept sets: {', '.join(CONCEPT_SETS)} (default: toy for the toy model, "
                         "else first-letter,number,capitalised,code-vs-prose)")
    pr.add_argument("--ks", default="1,2,5,20", help="latents per probe, comma-separated (default 1,2,5,20)")
    pr.add_argument("--n-per-class", type=int, default=256, help="examples per class and concept (default 256)")
    pr.add_argument("--min-per-class", type=int, default=20, help="refuse concepts with fewer (default 20)")
    pr.add_argument("--split", choices=("context", "example"), default="context",
                    help="context: each text wholly in train or test (default); example: stratified by example")
    pr.add_argument("--n-documents", type=int, default=512, help="toy documents of the toy concepts (default 512)")
    pr.add_argument("--code-text", default=None, metavar="SPEC",
                    help="code for code-vs-prose (default: saelab's own Python modules)")
    _common(pr)
    pr.set_defaults(func=run_probe)

    ab = subparsers.add_parser("absorption", help="feature absorption on the first-letter task (Chanin et al.; "
                                                  "SAEBench's absorption fraction and full-absorption rate)")
    ab.add_argument("--sae", required=True, metavar="DIR", help="SAE folder")
    ab.add_argument("--split", choices=("word", "occurrence"), default="word",
                    help="word: test words are unseen (published); occurrence: test occurrences of seen words")
    ab.add_argument("--min-letters", type=int, default=20,
                    help="letters with a good probe below which the model is called too small (default 20)")
    _common(ab)
    ab.set_defaults(func=run_absorption)


# ----------------------------------------------------------------------------------- helpers
def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{flag} {text!r} must be comma-separated whole numbers, e.g. 1,2,5,20") from None


def _load(sae_paths: list[str], model: str | None, device: str):
    """(lm, [sae, ...]) with the model from ``model`` or the first folder's recorded model."""
    from saelab.models import load_model
    from saelab.sae import load_sae_with_info

    loaded = [load_sae_with_info(p, device=device) for p in sae_paths]
    specs = {p: info.metadata.get("model_name") or info.saelab.get("model_name") for p, (_, info) in
             zip(sae_paths, loaded, strict=True)}
    spec = model or specs[sae_paths[0]]
    if not spec:
        raise ConfigError(f"SAE folder {sae_paths[0]!r} records no model (metadata.model_name); pass --model, e.g. "
                          "--model toy")
    if model is None and len({s for s in specs.values() if s}) > 1:
        raise ConfigError(f"the SAE folders record different models ({specs}); pass --model to probe them on one")
    return load_model(spec, device=device), [sae for sae, _ in loaded]


def _is_toy(lm) -> bool:
    from saelab.eval.recovery import NotToyModelError, check_toy_vocabulary

    try:
        check_toy_vocabulary(lm)
    except NotToyModelError:
        return False
    return True


def _texts(spec: str | None, max_texts: int, lm) -> tuple[list[str], str]:
    """(texts, description) of ``--text``; by default held-out toy documents for a toy-vocabulary
    model, else ``REAL_CORPUS`` when present, else toy documents."""
    from saelab.data.sources import read_texts
    from saelab.eval.evaluate import DEFAULT_EVAL_SOURCE

    if spec is None:
        spec = DEFAULT_EVAL_SOURCE if _is_toy(lm) or not REAL_CORPUS.is_file() else str(REAL_CORPUS)
    return read_texts(spec, max_texts, what="--text"), f"{spec} ({max_texts} texts)"


def build_concepts(lm, names: list[str], args: argparse.Namespace) -> tuple[list, dict[str, str]]:
    """The concepts of ``names`` (``CONCEPT_SETS``) and which text each came from."""
    from saelab.eval.concepts import (
        code_vs_prose_concept,
        default_context,
        first_letter_data,
        token_property_concepts,
        toy_concepts,
    )

    context = args.context_size or default_context(lm)
    sizes = {"n_per_class": args.n_per_class, "min_per_class": args.min_per_class}
    concepts, sources = [], {}
    texts, described = None, ""
    for name in names:
        if name == "toy":
            concepts += toy_concepts(lm, n_documents=args.n_documents, context_size=context, sample_seed=args.seed,
                                     **sizes)
            sources[name] = f"toy documents ({args.n_documents}, held-out seed)"
            continue
        if texts is None:
            texts, described = _texts(args.text, args.max_texts, lm)
        sources[name] = described
        if name == "first-letter":
            data = first_letter_data(lm, texts, context_size=context, seed=args.seed)
            concepts += data.concepts(seed=args.seed, **sizes)
        elif name in ("number", "capitalised"):
            concepts += token_property_concepts(lm, texts, (name,), context_size=context, seed=args.seed, **sizes)
        else:
            code = _texts(args.code_text, args.max_texts, lm)[0] if args.code_text else None
            sources[name] = f"code: {args.code_text or 'saelab modules'}; prose: {described}"
            concepts.append(code_vs_prose_concept(lm, code, texts, context_size=context, seed=args.seed, **sizes))
    return concepts, sources


def _concept_names(args: argparse.Namespace, lm) -> list[str]:
    if args.concepts:
        names = [n.strip() for n in args.concepts.split(",") if n.strip()]
        bad = [n for n in names if n not in CONCEPT_SETS]
        if bad or not names:
            raise ConfigError(f"--concepts {args.concepts!r}: unknown {bad}; choose from {', '.join(CONCEPT_SETS)}")
        return names
    return ["toy"] if _is_toy(lm) else ["first-letter", "number", "capitalised", "code-vs-prose"]


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_probing(results, sources: dict[str, str]) -> str:
    """Readable tables: mean test accuracy (AUC) per SAE and k, then per concept group."""
    ks = list(results[0].config.ks)
    head = ["sae", "hook", "dense"] + [f"k={k}" for k in ks] + ["all latents"]
    lines = [f"k-sparse probing: {results[0].summary()['n_concepts']} concepts; "
             + "; ".join(f"{k}: {v}" for k, v in sources.items()),
             "mean test accuracy (AUC)", " | ".join(head)]
    for r in results:
        s = r.summary()
        cell = lambda m: "-" if m is None else f"{m['accuracy']:.3f} ({m['auc']:.3f})"  # noqa: E731
        lines.append(" | ".join([f"{r.sae} ({r.architecture})", r.hook, cell(s["dense"])]
                                + [cell(s["sae_top_k"][str(k)]) for k in ks] + [cell(s["sae_all_latents"])]))
    lines += ["", f"by group: test accuracy at k={ks[0]} / k={ks[-1]} / dense",
              " | ".join(["group"] + [r.sae for r in results])]
    groups = list(results[0].summary()["by_group"])
    for g in groups:
        row = [g]
        for r in results:
            grp = r.summary()["by_group"][g]
            row.append(f"{_fmt(grp['sae_top_k'][str(ks[0])]['accuracy'])} / "
                       f"{_fmt(grp['sae_top_k'][str(ks[-1])]['accuracy'])} / {_fmt(grp['dense']['accuracy'])}")
        lines.append(" | ".join(row))
    for r in results:
        lines += [f"note ({r.sae}): {n}" for n in r.notes]
    return "\n".join(lines)


def format_absorption(result) -> str:
    """Readable table: per letter, then the means over scored letters and the notes."""
    s = result.summary()
    lines = [f"feature absorption of {result.sae} ({result.architecture}) at {result.hook}, split by "
             f"{result.config.split}",
             "letter | words train/test | probe F1 | probe TPs | main latents | absorption fraction | full rate"]
    for r in result.letters:
        mark = "" if r.scored else " (not scored)"
        lines.append(f"{r.letter} | {r.n_train_words}/{r.n_test_words} | {r.probe_f1:.3f} | {r.probe_true_positives} | "
                     f"{','.join(map(str, r.main_latents))} | {_fmt(r.mean_absorption_fraction)} | "
                     f"{_fmt(r.full_absorption_rate)}{mark}")
    lines += ["", f"mean absorption fraction {_fmt(s['mean_absorption_fraction_score'])}, mean full absorption "
              f"{_fmt(s['mean_full_absorption_score'])}, mean split features {_fmt(s['mean_num_split_features'])} "
              f"over {s['n_letters_scored']} of {s['n_letters']} letters"]
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines)


def _emit(obj: dict, text: str, as_json: bool) -> None:
    print(json.dumps(obj, indent=2, allow_nan=False) if as_json else text)


# ----------------------------------------------------------------------------------- commands
def run_probe(args: argparse.Namespace) -> int:
    from saelab.eval.probing import ProbingConfig, plot_accuracy_vs_k, sparse_probing_saes
    from saelab.fileio import atomic_write_json, check_output_folder

    apply_threads(args)
    out = check_output_folder(args.out, what="--out") if args.out else None
    config = ProbingConfig(ks=_ints(args.ks, "--ks"), seed=args.seed, split=args.split,
                           min_per_class=args.min_per_class, progress=not args.no_progress)
    lm, saes = _load(args.sae, args.model, args.device)
    concepts, sources = build_concepts(lm, _concept_names(args, lm), args)
    results = sparse_probing_saes(saes, lm, concepts, config=config)
    report = {"model": lm.name, "concept_sources": sources, "results": [r.to_dict() for r in results]}
    if out is not None:
        report["files"] = {"json": str(out / "probe.json"), "plot": str(out / "probe_accuracy_vs_k.png")}
        plot_accuracy_vs_k(results, report["files"]["plot"])
        atomic_write_json(report["files"]["json"], report)
    for r in results:
        for note in r.notes:
            print(f"saelab probe: note: {r.sae}: {note}", file=sys.stderr)
    text = format_probing(results, sources)
    if out is not None:
        text += "".join(f"\n{k}: {v}" for k, v in report["files"].items())
    _emit(report, text, args.json)
    return 0


def run_absorption(args: argparse.Namespace) -> int:
    from saelab.eval.absorption import AbsorptionConfig, absorption, plot_absorption
    from saelab.eval.concepts import default_context, first_letter_data
    from saelab.fileio import atomic_write_json, check_output_folder

    apply_threads(args)
    out = check_output_folder(args.out, what="--out") if args.out else None
    config = AbsorptionConfig(seed=args.seed, split=args.split, min_letters=args.min_letters,
                              n_documents=args.max_texts, progress=not args.no_progress)
    lm, (sae,) = _load([args.sae], args.model, args.device)
    texts, described = _texts(args.text, args.max_texts, lm)
    data = first_letter_data(lm, texts, context_size=args.context_size or default_context(lm), seed=args.seed)
    result = absorption(sae, lm, data, config)
    report = {**result.to_dict(), "text_source": described}
    if out is not None:
        report["files"] = {"json": str(out / "absorption.json"), "plot": str(out / "absorption_by_letter.png")}
        plot_absorption(result, report["files"]["plot"])
        atomic_write_json(report["files"]["json"], report)
    text = f"text: {described}\n" + format_absorption(result)
    if out is not None:
        text += "".join(f"\n{k}: {v}" for k, v in report["files"].items())
    _emit(report, text, args.json)
    return 0
