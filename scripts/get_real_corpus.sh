#!/usr/bin/env bash
# A real English corpus, offline: prose shipped in Debian packages (the Python 3.11 documentation's
# reST sources, the Jargon File, fortune files), downloaded with apt-get download (no install, no
# root needed beyond apt's lists), unpacked with dpkg-deb -x and cleaned by `saelab corpus build`:
# markup and code removed, paragraphs deduplicated, documents split 95/5 into train and held-out.
#
#   bash scripts/get_real_corpus.sh [DIR]     # default DIR: real/ in the repository (git-ignored)
#
# Afterwards: DIR/corpus/train.txt, DIR/corpus/heldout.txt (+ .jsonl, manifest.json); about 1.1M words.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-real}"
if [ -n "${VIRTUAL_ENV:-}" ] || [ -x .venv/bin/python ]; then PY="${VIRTUAL_ENV:-.venv}/bin/python"; else PY=python3; fi
PACKAGES="python3.11-doc jargon-text fortunes fortunes-min"
mkdir -p "$DIR/debs/unpacked"
if [ -z "$(ls "$DIR"/debs/*.deb 2>/dev/null)" ]; then
    if ! (cd "$DIR/debs" && apt-get download $PACKAGES); then
        apt-get update -qq
        (cd "$DIR/debs" && apt-get download $PACKAGES)
    fi
fi
for deb in "$DIR"/debs/*.deb; do dpkg-deb -x "$deb" "$DIR/debs/unpacked"; done
if [ ! -f "$DIR/corpus/manifest.json" ]; then
    "$PY" -m saelab corpus build --from "$DIR/debs/unpacked" --out "$DIR/corpus"
fi
echo "corpus: $DIR/corpus/train.txt, $DIR/corpus/heldout.txt"
