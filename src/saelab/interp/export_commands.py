"""``saelab export neuronpedia``: write the folder Neuronpedia imports (``saelab.interp.neuronpedia``).

::

    saelab export neuronpedia SAE_DIR --out DIR [--model M] [--features 0-99|all] [--tokens N] [--source ...]
"""

from __future__ import annotations

import argparse

from saelab.cli_args import apply_threads, source_from_args
from saelab.interp.commands import _add_common, _emit, _load, feature_config


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="write an SAE's feature data in another tool's import format")
    formats = p.add_subparsers(dest="export_format", metavar="FORMAT", required=True)
    np_ = formats.add_parser(
        "neuronpedia", help="the folder Neuronpedia imports (features/ and activations/ batch files)",
        description="Gather max-activating examples, quantile samples, logit tables, histograms and (for hook_z "
                    "SAEs) DFA of latents in one pass per batch, and write OUT/{modelId}/{sourceId} in "
                    "Neuronpedia's import layout, validated against its schema.")
    _add_common(np_, 100_000, features="all")
    np_.add_argument("--out", required=True, help="output folder (the export goes to OUT/{modelId}/{sourceId})")
    np_.add_argument("--model", default=None, help="model spec (default: the one recorded in the SAE folder)")
    np_.add_argument("--n-top", type=int, default=20, help="top examples per latent (default 20)")
    np_.add_argument("--context-left", type=int, default=None,
                     help="tokens shown before the activating token (default: the whole window)")
    np_.add_argument("--context-right", type=int, default=None,
                     help="tokens shown after it (default: the whole window)")
    np_.add_argument("--model-id", default=None, help="Neuronpedia model id (default: the model's name)")
    np_.add_argument("--source-set", default=None, help="source set id, e.g. res-16k (default saelab-SITE-D_SAE)")
    np_.add_argument("--release", default=None, help="release id (default: the source set)")
    np_.add_argument("--release-title", default=None, help="release title")
    np_.add_argument("--description", default=None, help="source set description, e.g. 'Residual Stream - 16k'")
    np_.add_argument("--creator-name", default="saelab", help="author shown on Neuronpedia (default saelab)")
    np_.add_argument("--creator-id", default=None,
                     help="Neuronpedia user id of the rows (default: the bot user of Neuronpedia's seed)")
    np_.add_argument("--url", action="append", default=[], help="a URL of the release (repeatable)")
    np_.add_argument("--hf-repo-id", default=None, help="Hugging Face repo holding the SAE weights")
    np_.add_argument("--hf-folder-id", default=None, help="folder of the SAE inside that repo")
    np_.add_argument("--batch-size", type=int, default=1024, help="latents per batch file and pass (default 1024)")
    np_.set_defaults(func=run_export_neuronpedia)


def run_export_neuronpedia(args: argparse.Namespace) -> int:
    from saelab.interp.neuronpedia import DEFAULT_CREATOR_ID, NeuronpediaConfig, export_neuronpedia

    cfg = NeuronpediaConfig(model_id=args.model_id, source_set=args.source_set, release=args.release,
                            release_title=args.release_title, description=args.description,
                            creator_name=args.creator_name, creator_id=args.creator_id or DEFAULT_CREATOR_ID,
                            urls=list(args.url), hf_repo_id=args.hf_repo_id, hf_folder_id=args.hf_folder_id,
                            features_per_batch=args.batch_size)
    window = args.context_size
    data_cfg = feature_config(args, n_top=args.n_top,
                              context_left=window if args.context_left is None else args.context_left,
                              context_right=window if args.context_right is None else args.context_right)
    apply_threads(args)
    lm, sae, hook = _load(args, args.model)
    summary = export_neuronpedia(lm, sae, hook, source_from_args(args), args.out, args.features, cfg, data_cfg)
    _emit(args, summary)
    return 0
