"""``saelab sae list|info|fetch|convert``: the pretrained-SAE registry and the published formats.

    saelab sae list [--model M] [--json]
    saelab sae info RELEASE [SAE_ID] [--json]
    saelab sae fetch RELEASE SAE_ID --out DIR            # download (or read the cache) -> saelab folder
    saelab sae convert PATH [--format F] [--to F] --out DIR [--hook-name H] [--hook-name-out H]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from saelab.cli_args import emit


def register(subparsers) -> None:
    from saelab.pretrained.formats import FORMATS, WRITABLE

    parser = subparsers.add_parser("sae", help="pretrained SAEs: list releases, describe one, fetch, convert formats")
    sub = parser.add_subparsers(dest="sae_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)

    def yaml_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--saelens-yaml", metavar="PATH", default=None,
                       help="SAELens' pretrained_saes.yaml to add to the registry (default: an installed sae_lens's)")
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    ls = sub.add_parser("list", help="the releases in the registry")
    ls.add_argument("--model", default=None, help="only releases for this model (registry name or Hugging Face id)")
    yaml_option(ls)
    ls.set_defaults(func=run_list)

    info = sub.add_parser("info", help="one release (its SAE ids) or one SAE: what, where from, size")
    info.add_argument("release")
    info.add_argument("sae_id", nargs="?", default=None, help="an SAE id of the release (omit to list them)")
    yaml_option(info)
    info.set_defaults(func=run_info)

    get = sub.add_parser("fetch", help="download one SAE (or read it from the cache) and save a saelab folder")
    get.add_argument("release")
    get.add_argument("sae_id")
    get.add_argument("--out", required=True, help="the saelab/SAELens folder to write")
    get.add_argument("--revision", default=None, help="a Hub revision (default: main)")
    yaml_option(get)
    get.set_defaults(func=run_fetch)

    conv = sub.add_parser("convert", help="a downloaded SAE in a published format -> a saelab/SAELens folder")
    conv.add_argument("path", help="the SAE's folder (or a file in it)")
    conv.add_argument("--format", default="auto", choices=("auto", *FORMATS),
                      help="the input's format (default: detected from its files)")
    conv.add_argument("--to", default="saelens", choices=WRITABLE, help="the output format (default saelens)")
    conv.add_argument("--out", required=True, help="the folder to write")
    conv.add_argument("--hook-name", default="", help="TransformerLens hook the SAE reads, if its files do not say")
    conv.add_argument("--hook-name-out", default="", help="the hook a transcoder predicts, if its files do not say")
    conv.add_argument("--model", default="", help="the model's name, recorded in the output")
    conv.add_argument("--json", action="store_true", help="print JSON instead of a table")
    conv.set_defaults(func=run_convert)


def print_rows(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """An aligned text table of ``rows`` (one line per row, ``columns`` in order)."""
    cells = [[str("" if row.get(c) is None else row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def run_list(args: argparse.Namespace) -> int:
    from saelab.pretrained import list_releases

    found = list_releases(model=args.model, saelens_yaml=args.saelens_yaml)
    rows = [r.to_dict() for r in found]
    if args.json:
        print(json.dumps([{**row, "sae_ids": list(r.saes)} for row, r in zip(rows, found, strict=True)], indent=2))
        return 0
    for row in rows:
        row.update(architectures=",".join(row["architectures"]), kinds=",".join(row["kinds"]))
    print_rows(rows, ["release", "model", "format", "architectures", "kinds", "n_saes", "repo_id"])
    return 0


def run_info(args: argparse.Namespace) -> int:
    from saelab.pretrained import get_release, release_info

    if args.sae_id is None:
        release = get_release(args.release, args.saelens_yaml)
        if args.json:
            print(json.dumps(release.to_dict(with_saes=True), indent=2))
            return 0
        summary = release.to_dict()
        emit({k: ",".join(v) if isinstance(v, list) else v for k, v in summary.items()}, False)
        print()
        print_rows([s.to_dict() for s in release.saes.values()],
                   ["sae_id", "hook_name", "hook_name_out", "d_sae", "l0", "neuronpedia_id"])
        return 0
    entry = release_info(args.release, args.sae_id, args.saelens_yaml)
    summary = {**entry.to_dict(), "load": f"saelab.pretrained.load_sae({entry.release!r}, {entry.sae_id!r})",
               "fetch": f"saelab sae fetch {entry.release} {entry.sae_id} --out DIR"}
    if entry.n_params is not None:
        d_out = entry.d_out or entry.d_in or 0
        summary["size"] = (f"{entry.n_params:,} encoder parameters (d_in {entry.d_in} x d_sae {entry.d_sae}); "
                           f"{entry.n_params + entry.d_sae * d_out:,} with the decoder")
    emit(summary, args.json)
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    from saelab.pretrained import save_pretrained

    out, info = save_pretrained(args.release, args.sae_id, args.out, revision=args.revision,
                                saelens_yaml=args.saelens_yaml)
    cfg = info.entry
    emit({"release": cfg.release, "sae_id": cfg.sae_id, "from": str(info.folder), "out": str(out),
          "notes": info.notes}, args.json)
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from saelab.pretrained import Hints, convert

    hints = Hints(hook_name=args.hook_name, hook_name_out=args.hook_name_out, model=args.model)
    out, converted = convert(args.path, args.out, args.format, args.to, hints)
    cfg = converted.sae.cfg
    emit({"in": args.path, "out": str(out), "to": args.to, "architecture": cfg.architecture, "d_in": cfg.d_in,
          "d_sae": cfg.d_sae, "d_out": cfg.d_out, "hook_name": cfg.hook_name, "hook_name_out": cfg.hook_name_out,
          "notes": converted.notes}, args.json)
    return 0
