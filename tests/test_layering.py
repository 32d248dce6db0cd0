"""Layering: no library module imports a CLI module, and no package imports against the data flow.

Every import under ``src/saelab`` is read with ``ast`` (module-level, function-level, ``TYPE_CHECKING``
and relative ones alike). A *unit* is a subpackage (``saelab.data``) or a top-level module
(``saelab.fileio``). ``LAYERS`` is the design's data flow, lowest first: text and models feed
activations, activations feed SAE training, trained SAEs feed the analyses, and the demo runs them
all. A library module may import its own unit and units before it, never one after. CLI modules
(``saelab/cli.py``, ``saelab/cli_*.py``, ``saelab/__main__.py``, ``saelab/*/*commands.py``) sit above
everything: they may import anything, and no library module may import them.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS: tuple[str, ...] = (
    "saelab",     # the package root (__version__)
    "errors",     # user-facing errors and validators
    "fileio",     # atomic writes, safetensors checks
    "parallel",   # torch.distributed process-group basics
    "plotting",
    "report",
    "toy",        # the embedded world: corpus, tokenizer, bundled model folder
    "models",     # loading, hook adapters
    "data",       # text sources, packing, activation store and cache
    "sae",        # architectures, folder I/O
    "pretrained", # published SAE releases and their formats
    "splicing",   # running a model with coders in place of hook activations
    "train",      # trainer, checkpoints, run specs, distributed training
    "eval",       # metrics, splicing evaluations, sweeps, feature recovery
    "interp",     # examples, logits, dashboards, autointerp
    "bench",      # the evaluation panel: eval and interp metrics over many SAEs
    "attention",  # head attribution, DFA, census
    "causal",     # patching, ablation, steering
    "circuits",   # discrete-SAE circuit discovery and baselines
    "graphs",     # attribution graphs through transcoders
    "explorer",   # web app
    "demo",       # the end-to-end tour
)


# Imports that break a rule and wait for a move in code this change may not touch, each with the move
# that removes it. The rule stays strict: an entry that no longer occurs fails the test (remove it).
PENDING_MOVES: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported saelab module
    line: int


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def is_cli(module: str) -> bool:
    parts = module.split(".")
    if parts[-1].endswith("commands"):  # commands.py, export_commands.py: sub-command modules
        return True
    return len(parts) == 2 and (parts[1] in ("cli", "__main__") or parts[1].startswith("cli_"))


def collect_imports(root: Path) -> list[Import]:
    """Every import of a ``saelab`` module by a module under ``root/saelab``."""
    files = {module_name(p, root): p for p in sorted((root / "saelab").rglob("*.py"))}
    found = []
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                # ``from saelab import cli_args`` imports the module saelab.cli_args
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            found += [Import(module, t, node.lineno) for t in targets if t == "saelab" or t.startswith("saelab.")]
    return found


def violations(root: Path, pending: dict[tuple[str, str], str] | None = None) -> list[str]:
    """What breaks the rules in the tree ``root/saelab`` (see the module docstring), one line each;
    imports listed in ``pending`` are left out."""
    found = set()
    for imp in collect_imports(root):
        if (imp.module, imp.target) in (pending or {}):
            continue
        where = f"{imp.module} (line {imp.line}) imports {imp.target}"
        for name in (imp.module, imp.target):
            if not is_cli(name) and unit(name) not in LAYERS:
                found.add(f"{name}: unit {unit(name)!r} has no place in LAYERS (tests/test_layering.py); add it "
                          "where it belongs in the data flow")
        if is_cli(imp.module):
            continue
        if is_cli(imp.target):
            found.add(f"{where}: a library module may not import a CLI module; move what it needs into the library")
        elif unit(imp.target) in LAYERS and unit(imp.module) in LAYERS and \
                LAYERS.index(unit(imp.target)) > LAYERS.index(unit(imp.module)):
            found.add(f"{where}: {unit(imp.module)} is below {unit(imp.target)} in the data flow; move the code "
                      "down to a layer both may import")
    return sorted(found)


def test_saelab_follows_the_layering():
    assert (SRC / "saelab" / "__init__.py").exists()
    problems = violations(SRC, PENDING_MOVES)
    assert not problems, "\n".join(problems)


def test_pending_moves_are_still_pending():
    found = {(imp.module, imp.target) for imp in collect_imports(SRC)}
    done = [f"{module} -> {target}" for module, target in PENDING_MOVES if (module, target) not in found]
    assert not done, f"no longer imported, remove from PENDING_MOVES: {done}"


def test_every_package_has_a_layer():
    units = {unit(module_name(p, SRC)) for p in (SRC / "saelab").rglob("*.py")}
    assert {u for u in units if not is_cli(f"saelab.{u}")} <= set(LAYERS)


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def test_the_checker_catches_planted_violations(tmp_path):
    root = _tree(tmp_path, {
        "saelab/__init__.py": "",
        "saelab/cli_args.py": "from saelab.train import trainer\n",            # a CLI module: anything goes
        "saelab/data/__init__.py": "",
        "saelab/data/store.py": """
            from saelab.models import load_model  # allowed: models is below data

            def run():
                from saelab.train.distributed import active_world  # against the flow, inside a function
                return active_world()
            """,
        "saelab/data/commands.py": "from saelab.eval import metrics\n",        # a CLI module
        "saelab/data/export_commands.py": "from saelab.cli_args import x\n",  # another one
        "saelab/models/__init__.py": "",
        "saelab/sae/__init__.py": "",
        "saelab/sae/bad.py": "from ..train import distributed\n",            # relative, against the flow
        "saelab/train/__init__.py": "",
        "saelab/train/distributed.py": "from . import trainer\nfrom saelab.sae import bad\n",
        "saelab/train/trainer.py": "",
        "saelab/eval/__init__.py": "",
        "saelab/eval/metrics.py": "",
        "saelab/demo.py": "from saelab import cli_args\nimport saelab.data.commands\n",
        "saelab/newthing/__init__.py": "",
    })
    problems = violations(root)
    assert len(problems) == 4, "\n".join(problems)
    expected = [("saelab.data.store (line 5) imports saelab.train.distributed", "below train"),
                ("saelab.sae.bad (line 1) imports saelab.train", "below train"),
                ("saelab.demo (line 1) imports saelab.cli_args", "may not import a CLI module"),
                ("saelab.demo (line 2) imports saelab.data.commands", "may not import a CLI module")]
    for where, why in expected:
        assert any(p.startswith(where) and why in p for p in problems), (where, problems)
    assert not any("saelab.newthing" in p for p in problems)  # not imported by anything: found by the next check
    assert not any(p.startswith(("saelab.cli_args", "saelab.data.commands", "saelab.data.export_commands",
                                 "saelab.train.distributed"))
                   for p in problems)


def test_the_checker_wants_a_layer_for_every_unit(tmp_path):
    root = _tree(tmp_path, {"saelab/__init__.py": "", "saelab/newthing/__init__.py": "from saelab import errors\n",
                            "saelab/errors.py": ""})
    assert violations(root) == ["saelab.newthing: unit 'newthing' has no place in LAYERS (tests/test_layering.py); "
                                "add it where it belongs in the data flow"]
