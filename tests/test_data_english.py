"""The offline English corpus builder: markup removed, prose kept, duplicates dropped, a
deterministic document-level train/held-out split, files that the text sources read."""

from __future__ import annotations

import gzip
import json

import pytest

from saelab.cli import main
from saelab.data.english import (
    Document,
    find_documents,
    fortune_texts,
    is_heldout,
    jargon_documents,
    rst_paragraphs,
    write_corpus,
)
from saelab.data.sources import open_source
from saelab.errors import SaelabError

RST = """.. _tut-if:

:keyword:`!if` Statements
=========================

Perhaps the most well-known statement type is the :keyword:`if` statement.  For
example::

   >>> x = int(input("Please enter an integer: "))
   >>> if x < 0:
   ...     x = 0

There can be zero or more :keyword:`elif` parts, and the ``else`` part is
optional; see :ref:`the match statement <tut-match>` and :func:`~os.path.join`.

.. note::

   This note is a directive body and is dropped.

* A bullet item that is long enough to be kept as prose in the corpus.

+-------+-------+
| table | cells |
+-------+-------+
"""

JARGON = """   :baroque: adj.

   [common] Feature-encrusted; complex; gaudy; verging on excessive. See
   also {rococo}.

   :BASIC: /bay'·sic/, n.

   A programming language, originally designed for Dartmouth's experimental
   timesharing system in the early 1960s.
"""

FORTUNES = """A biologist, a statistician and a computer scientist are on a photo
safari in Africa.
		-- anonymous
%
Short one.
%
"""


def test_rst_markup_is_removed_and_code_directives_and_headings_dropped():
    paragraphs = rst_paragraphs(RST)
    assert paragraphs[0] == "Perhaps the most well-known statement type is the if statement. For example:"
    assert paragraphs[1] == ("There can be zero or more elif parts, and the else part is optional; see the match "
                             "statement and join.")
    assert "A bullet item that is long enough to be kept as prose in the corpus." in paragraphs
    text = " ".join(paragraphs)
    for dropped in ("Statements", ">>>", "directive body", "table", "tut-if", "x = 0"):
        assert dropped not in text


def test_jargon_entries_and_fortunes_become_documents():
    entries = dict(jargon_documents(JARGON))
    assert list(entries) == ["baroque", "BASIC"]
    assert entries["baroque"][0].startswith("[common] Feature-encrusted")
    assert list(fortune_texts(FORTUNES)) == [
        "A biologist, a statistician and a computer scientist are on a photo safari in Africa.", "Short one."]


def test_write_corpus_dedups_filters_and_splits_by_document(tmp_path):
    prose = "This paragraph is ordinary English prose with more than eight words in it."
    docs = [Document(f"doc{i}", "test", (f"Document {i} says something long enough to be kept here.", prose))
            for i in range(200)]
    docs.append(Document("code", "test", ("x = f(a, b) + g[c] * 3 ** 2 // 7 % 5 | 1 & 2 ^ 3 :: {}",)))
    manifest = write_corpus(docs, tmp_path, heldout_fraction=0.1)
    train = (tmp_path / "train.txt").read_text().split("\n\n")
    heldout = (tmp_path / "heldout.txt").read_text().split("\n\n")
    everything = [p for p in train + heldout if p]
    assert everything.count(prose) == 1  # deduplicated across documents
    assert not any("g[c]" in p for p in everything)  # not prose
    assert manifest["splits"]["train"]["paragraphs"] + manifest["splits"]["heldout"]["paragraphs"] == 201
    assert 5 <= manifest["splits"]["heldout"]["documents"] <= 40
    names_held = {json.loads(line)["source"] for line in (tmp_path / "heldout.jsonl").read_text().splitlines()}
    names_train = {json.loads(line)["source"] for line in (tmp_path / "train.jsonl").read_text().splitlines()}
    assert not names_held & names_train and names_held == {d for d in names_held if is_heldout(d, 0.1)}
    collections = {json.loads(line)["collection"] for line in (tmp_path / "heldout.jsonl").read_text().splitlines()}
    assert collections == {"test"}  # each paragraph names its document's collection
    again = write_corpus(docs, tmp_path / "again", heldout_fraction=0.1)
    assert again["sha256"] == manifest["sha256"]  # deterministic
    texts = list(open_source(str(tmp_path / "heldout.txt")).iter_texts())
    assert texts == [p for p in heldout if p]


def test_corpus_build_reads_unpacked_packages_and_refuses_an_empty_folder(tmp_path, capsys):
    root = tmp_path / "unpacked"
    (root / "usr/share/doc/python3.11/html/_sources/tutorial").mkdir(parents=True)
    (root / "usr/share/doc/python3.11/html/_sources/tutorial/controlflow.rst.txt").write_text(RST)
    (root / "usr/share/doc/jargon-text").mkdir(parents=True)
    (root / "usr/share/doc/jargon-text/jargon.txt.gz").write_bytes(gzip.compress(JARGON.encode()))
    (root / "usr/share/games/fortunes").mkdir(parents=True)
    (root / "usr/share/games/fortunes/science").write_text(FORTUNES)
    (root / "usr/share/games/fortunes/science.dat").write_bytes(b"\x00\x01")
    sources = {d.source for d in find_documents(root)}
    assert sources == {"python-docs", "jargon", "fortunes"}
    with pytest.raises(SystemExit) as done:
        main(["corpus", "build", "--from", str(root), "--out", str(tmp_path / "corpus"), "--heldout-fraction", "0"])
    assert done.value.code == 0 and "train" in capsys.readouterr().out
    assert (tmp_path / "corpus/manifest.json").is_file()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SaelabError, match="no prose was found"):
        write_corpus(find_documents(tmp_path / "empty"), tmp_path / "out")
