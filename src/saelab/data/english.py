"""A real English corpus built offline from prose that Debian packages ship.

Three kinds of raw text, each cleaned into plain paragraphs (one line each, markup removed):

- reStructuredText (the Python documentation's ``_sources/**/*.rst.txt``): directives and their
  bodies, literal blocks (``::``), doctest lines, tables, headings and comments are dropped; inline
  roles (``:func:`x```), literals, emphasis and link targets are reduced to their text.
- The Jargon File (``jargon.txt``): one document per ``:entry:``; ``{cross references}`` unwrapped.
- fortune files (``%``-separated): one document per fortune; attribution lines dropped.

Then paragraphs are filtered (at least ``min_words`` words, mostly letters), deduplicated by their
normalised text, and documents are split deterministically into train and held-out by a hash of
their name, so that no document is in both. ``write_corpus`` writes ``train.txt``/``heldout.txt``
(paragraphs separated by blank lines, as ``TextFileSource`` reads them), the same as ``.jsonl``
(``{"text", "source", "collection"}`` per paragraph: the document's name and its collection,
``python-docs``, ``jargon`` or ``fortunes``) and ``manifest.json`` (counts, sources, sha256 of each file).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from saelab.errors import SaelabError, check_range


@dataclass(frozen=True)
class Document:
    """A named piece of prose: ``name`` (stable, used for the split), ``source`` (which collection)
    and its ``paragraphs`` (each one line of plain text)."""

    name: str
    source: str
    paragraphs: tuple[str, ...]


# --- reStructuredText ------------------------------------------------------------------------------
_HEADING_RULE = re.compile(r"^([=\-~^\"'`#*+.:_])\1{2,}\s*$")
_ROLE = re.compile(r":[\w:.+-]+:`([^`]*)`")
_LITERAL = re.compile(r"``([^`]*)``")
_LINK = re.compile(r"`([^`<]*?)\s*(?:<[^>]*>)?`_{1,2}")
_INTERPRETED = re.compile(r"`([^`]*)`")
_EMPHASIS = re.compile(r"\*{1,2}([^*\s][^*]*?)\*{1,2}")
_FOOTNOTE = re.compile(r"\[[#*\d]+\]_")
_SUBSTITUTION = re.compile(r"\|[^|\s][^|]*\|")
_BULLET = re.compile(r"^\s*(?:[-*+•]|\d+\.|#\.|\([a-z0-9]\))\s+")


def _role_text(match: re.Match) -> str:
    """A role's displayed text: ``title <target>`` -> title; ``~a.b.c`` -> c; ``!x`` -> x."""
    text = match.group(1).lstrip("!")
    target = re.match(r"^(.*?)\s*<[^>]*>$", text)
    if target:
        return target.group(1)
    return text[1:].rsplit(".", 1)[-1] if text.startswith("~") else text


def rst_inline(text: str) -> str:
    """Inline reST markup reduced to its text: roles, literals, links, emphasis, footnotes."""
    text = _ROLE.sub(_role_text, text)
    text = _LITERAL.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _INTERPRETED.sub(r"\1", text)
    text = _EMPHASIS.sub(r"\1", text)
    text = _FOOTNOTE.sub("", text)
    text = _SUBSTITUTION.sub("", text)
    return re.sub(r"\s+", " ", text).strip()


def rst_paragraphs(source: str) -> list[str]:
    """The prose paragraphs of one reST document, markup removed (see the module docstring)."""
    lines = source.splitlines()
    paragraphs: list[str] = []
    block: list[str] = []
    skip_indent: int | None = None  # inside a directive body, comment or literal block
    literal_next = False

    def flush() -> None:
        nonlocal literal_next
        if block:
            text = " ".join(block).rstrip()
            literal_next = text.endswith("::")  # "For example::" -> "For example:"; "Text ::" -> "Text"
            if literal_next:
                text = text[:-2].rstrip() if text.endswith(" ::") else text[:-1]
            paragraphs.append(rst_inline(_BULLET.sub("", text)))
            block.clear()

    for i, line in enumerate(lines):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if skip_indent is not None:
            if not stripped or indent > skip_indent:
                continue
            skip_indent = None
        if not stripped:
            flush()
            continue
        if literal_next and indent > 0 and not block:
            skip_indent = indent - 1
            literal_next = False
            continue
        literal_next = False
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if stripped.startswith(".."):
            flush()
            skip_indent = indent
            continue
        if _HEADING_RULE.match(stripped) or _HEADING_RULE.match(nxt.strip()) and len(nxt.strip()) >= len(stripped) - 2:
            flush()
            continue
        if stripped.startswith((">>>", "...", "+--", "|", "$ ", "% ")) or re.match(r"^=+(\s+=+)+$", stripped):
            flush()
            continue
        if _BULLET.match(line) and block:
            flush()
        block.append(stripped)
    flush()
    return paragraphs


# --- the Jargon File and fortunes ------------------------------------------------------------------
_ENTRY = re.compile(r"^ {0,4}:([^:]+):(.*)$")


def jargon_documents(text: str) -> Iterator[tuple[str, list[str]]]:
    """``(entry name, paragraphs)`` for each entry of the Jargon File's plain-text edition."""
    name: str | None = None
    paragraphs: list[str] = []
    block: list[str] = []
    for line in [*text.splitlines(), ""]:
        entry = _ENTRY.match(line)
        if entry:
            if name is not None:
                if block:
                    paragraphs.append(" ".join(block))
                yield name, paragraphs
            name, paragraphs, block = entry.group(1).strip(), [], []
            continue
        if name is None:
            continue
        if line.strip():
            block.append(line.strip())
        elif block:
            paragraphs.append(" ".join(block))
            block = []
    if name is not None:
        if block:
            paragraphs.append(" ".join(block))
        yield name, paragraphs


def jargon_inline(text: str) -> str:
    text = re.sub(r"\{([^}]*)\}", r"\1", text)
    text = re.sub(r"^\[[^\]]*\]\s*", "", text)  # the [common], [techspeak] usage tags
    return re.sub(r"\s+", " ", text).strip()


def fortune_texts(text: str) -> Iterator[str]:
    """Each fortune of a ``%``-separated fortune file as one paragraph, attribution lines dropped."""
    for chunk in re.split(r"^%\s*$", text, flags=re.MULTILINE):
        lines = [ln.strip() for ln in chunk.splitlines() if ln.strip() and not ln.strip().startswith("--")]
        if lines:
            yield re.sub(r"\s+", " ", " ".join(lines)).strip()


# --- filtering, dedup, split -------------------------------------------------------------------------
def is_prose(paragraph: str, min_words: int) -> bool:
    """At least ``min_words`` words, at least 80 % of the non-space characters letters or ordinary
    punctuation, and some lower-case letters (drops code, tables and shouting)."""
    words = paragraph.split()
    if len(words) < min_words:
        return False
    chars = [c for c in paragraph if not c.isspace()]
    ordinary = sum(c.isalpha() or c in ",.;:'\"!?()-’“”—" for c in chars)
    return ordinary >= 0.8 * len(chars) and any(c.islower() for c in paragraph)


def normalise(paragraph: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", paragraph.lower()).strip()


def is_heldout(name: str, heldout_fraction: float) -> bool:
    """Deterministic: the first 8 bytes of sha256(name) as a fraction of 2**64."""
    value = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
    return value < heldout_fraction * 2**64


def clean_documents(documents: Iterable[Document], min_words: int = 8) -> Iterator[Document]:
    """Documents keeping only prose paragraphs never seen before (across all documents)."""
    seen: set[str] = set()
    for doc in documents:
        kept = []
        for paragraph in doc.paragraphs:
            key = normalise(paragraph)
            if is_prose(paragraph, min_words) and key not in seen:
                seen.add(key)
                kept.append(paragraph)
        if kept:
            yield Document(doc.name, doc.source, tuple(kept))


# --- reading the unpacked packages ---------------------------------------------------------------------
def _read(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return data.decode("utf-8", errors="replace")


def find_documents(root: str | Path) -> Iterator[Document]:
    """Every document under ``root`` (a folder where Debian packages were unpacked with
    ``dpkg-deb -x``): Python docs' reST sources, the Jargon File, fortune files."""
    root = Path(root)
    for path in sorted(root.rglob("_sources/**/*.rst.txt")):
        rel = path.relative_to(root).as_posix()
        yield Document(rel, "python-docs", tuple(rst_paragraphs(_read(path))))
    for path in sorted(root.rglob("jargon.txt*")):
        for name, paragraphs in jargon_documents(_read(path)):
            yield Document(f"jargon:{name}", "jargon", tuple(jargon_inline(p) for p in paragraphs))
    fortunes = root / "usr/share/games/fortunes"
    if fortunes.is_dir():
        for path in sorted(fortunes.iterdir()):
            if path.is_file() and not path.suffix and "off" not in path.parts:
                for i, text in enumerate(fortune_texts(_read(path))):
                    yield Document(f"fortune:{path.name}:{i}", "fortunes", (text,))


@dataclass
class CorpusStats:
    documents: int = 0
    paragraphs: int = 0
    words: int = 0
    bytes: int = 0


def write_corpus(documents: Iterable[Document], out: str | Path, *, heldout_fraction: float = 0.05,
                 min_words: int = 8) -> dict:
    """Clean, deduplicate and split ``documents``; write the files of the module docstring into ``out``.
    Returns the manifest (also written as ``manifest.json``)."""
    check_range("heldout_fraction", heldout_fraction, 0.0, 0.5)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stats = {"train": CorpusStats(), "heldout": CorpusStats()}
    by_source: dict[str, int] = {}
    with ExitStack() as stack:
        files = {split: (stack.enter_context(open(out / f"{split}.txt.tmp", "w", encoding="utf-8")),
                         stack.enter_context(open(out / f"{split}.jsonl.tmp", "w", encoding="utf-8")))
                 for split in stats}
        for doc in clean_documents(documents, min_words):
            split = "heldout" if is_heldout(doc.name, heldout_fraction) else "train"
            txt, jsonl = files[split]
            s = stats[split]
            s.documents += 1
            by_source[doc.source] = by_source.get(doc.source, 0) + len(doc.paragraphs)
            for paragraph in doc.paragraphs:
                txt.write(paragraph + "\n\n")
                jsonl.write(json.dumps({"text": paragraph, "source": doc.name, "collection": doc.source},
                                       ensure_ascii=False) + "\n")
                s.paragraphs += 1
                s.words += len(paragraph.split())
                s.bytes += len(paragraph.encode()) + 2
    if stats["train"].paragraphs == 0:
        for split in stats:
            for ext in ("txt", "jsonl"):
                (out / f"{split}.{ext}.tmp").unlink(missing_ok=True)
        raise SaelabError("no prose was found: expected Debian packages unpacked under the given folder "
                          "(python3.11-doc, jargon-text, fortunes); see scripts/get_real_corpus.sh")
    manifest: dict = {"heldout_fraction": heldout_fraction, "min_words": min_words, "paragraphs_by_source": by_source,
                      "splits": {k: vars(v) for k, v in stats.items()}, "sha256": {}}
    for split in stats:
        for ext in ("txt", "jsonl"):
            tmp, final = out / f"{split}.{ext}.tmp", out / f"{split}.{ext}"
            manifest["sha256"][final.name] = hashlib.sha256(tmp.read_bytes()).hexdigest()
            tmp.replace(final)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
