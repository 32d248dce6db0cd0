"""Deterministic document streams: the toy world, local files, pre-tokenized arrays, HF datasets.

Every source yields documents in a fixed order and describes itself as a JSON-able dict (recorded in
activation-cache manifests). Text sources are tokenized without special tokens (packing adds BOS /
separators, ``saelab.data.packing``):

- ``ToySource(seed)``: the toy world's infinite document stream (``saelab.toy.corpus``).
- ``TextFileSource(path, split)``: ``.txt`` files (one file or a folder of them); documents are
  paragraphs (blank-line separated, default), lines, or whole files.
- ``JsonlSource(path, text_column)``: one JSON object per line.
- ``ParquetSource(path, text_column)``: a ``.parquet`` file (read in row batches).
- ``HFDatasetSource(name, split, text_column, config, streaming)``: ``datasets.load_dataset`` by
  name or local path, streaming by default.
- ``TokenArraySource(path, key)``: pre-tokenized ``.npy`` / ``.safetensors``. A 1-D array is one
  continuous token stream; a 2-D array's rows are used as ready context windows (their length must
  equal the context size), or as documents with ``rows_are_windows=False``.

``open_source(spec, ...)`` builds one from a string: ``toy``, ``hf:NAME[:CONFIG]`` or a path.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from saelab.errors import ConfigError, CorruptFileError, SaelabError, check_choice, check_range

TEXT_BATCH = 256  # texts tokenized per call of the (fast) tokenizer


class MissingColumnError(SaelabError):
    """A text column that the data does not have."""


def _missing_column(column: str, available, where: str) -> MissingColumnError:
    return MissingColumnError(f"text column {column!r} does not exist in {where}; "
                              f"its columns are: {', '.join(map(str, available)) or '(none)'}")


def dataset_path_of(description: dict) -> str:
    """A short name of the data a ``Source.describe()`` dict stands for (SAELens' ``dataset_path``):
    ``toy:SEED``, a dataset name or a path."""
    if description.get("kind") == "toy":
        return f"toy:{description.get('seed')}"
    return str(description.get("name") or description.get("path"))


class Source(ABC):
    """A deterministic stream of documents."""

    #: True when consecutive "documents" are pieces of one continuous token stream (no separators)
    continuous: bool = False

    @abstractmethod
    def describe(self) -> dict:
        """What the source is, as a JSON-able dict (same dict = same stream)."""

    @abstractmethod
    def iter_token_documents(self, tokenizer) -> Iterator[np.ndarray]:
        """Documents as int64 token-id arrays ``[n_tokens]``, without special tokens."""

    @property
    def dataset_path(self) -> str:
        return dataset_path_of(self.describe())

    def iter_ready_windows(self, context_size: int) -> Iterator[np.ndarray] | None:
        """Already-packed windows ``[context_size]``, for sources that store them; else None."""
        return None


class TextSource(Source):
    """A source of raw texts, tokenized in batches."""

    @abstractmethod
    def iter_texts(self) -> Iterator[str]:
        """The documents' texts."""

    def iter_token_documents(self, tokenizer) -> Iterator[np.ndarray]:
        if tokenizer is None:
            raise SaelabError(f"source {self.describe()} holds text, but the model has no tokenizer")
        batch: list[str] = []
        for text in self.iter_texts():
            batch.append(text)
            if len(batch) == TEXT_BATCH:
                yield from _tokenize(tokenizer, batch)
                batch = []
        if batch:
            yield from _tokenize(tokenizer, batch)


def _tokenize(tokenizer, texts: list[str]) -> Iterator[np.ndarray]:
    for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]:
        yield np.asarray(ids, dtype=np.int64)


class ToySource(TextSource):
    """The toy world's seeded document stream (infinite)."""

    def __init__(self, seed: int = 0, prose_only: bool = False):
        check_range("seed", seed, 0, None, integer=True)
        self.seed, self.prose_only = int(seed), bool(prose_only)

    def describe(self) -> dict:
        return {"kind": "toy", "seed": self.seed, "prose_only": self.prose_only}

    def iter_texts(self) -> Iterator[str]:
        from saelab.toy.corpus import iter_documents

        for doc in iter_documents(self.seed, prose_only=self.prose_only):
            yield doc.text


def _files(path: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in suffixes and p.is_file())
        if not files:
            raise SaelabError(f"folder {str(path)!r} has no {'/'.join(suffixes)} files")
        return files
    if not path.is_file():
        raise SaelabError(f"data file {str(path)!r} does not exist")
    return [path]


class TextFileSource(TextSource):
    """``.txt`` file(s); ``split``: ``paragraph`` (blank-line separated), ``line`` or ``file``."""

    SPLITS = ("paragraph", "line", "file")

    def __init__(self, path: str | Path, split: str = "paragraph"):
        check_choice("split", split, self.SPLITS)
        self.path, self.split = Path(path), split
        self.files = _files(self.path, (".txt",))

    def describe(self) -> dict:
        return {"kind": "txt", "path": str(self.path.resolve()), "split": self.split}

    def iter_texts(self) -> Iterator[str]:
        for file in self.files:
            if self.split == "file":
                text = file.read_text(encoding="utf-8")
                if text.strip():
                    yield text
                continue
            with open(file, encoding="utf-8") as fh:
                if self.split == "line":
                    yield from (line.rstrip("\n") for line in fh if line.strip())
                    continue
                paragraph: list[str] = []
                for line in fh:
                    if line.strip():
                        paragraph.append(line.rstrip("\n"))
                    elif paragraph:
                        yield "\n".join(paragraph)
                        paragraph = []
                if paragraph:
                    yield "\n".join(paragraph)


class JsonlSource(TextSource):
    """One JSON object per line; the document is ``object[text_column]``."""

    def __init__(self, path: str | Path, text_column: str = "text"):
        self.path, self.text_column = Path(path), text_column
        self.files = _files(self.path, (".jsonl",))

    def describe(self) -> dict:
        return {"kind": "jsonl", "path": str(self.path.resolve()), "text_column": self.text_column}

    def iter_records(self, columns: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
        """``(record[c] as str for c in columns)`` per line; a line without one of them is an error."""
        for file in self.files:
            with open(file, encoding="utf-8") as fh:
                for number, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise CorruptFileError(f"{file}:{number} is not valid JSON: {exc}") from exc
                    missing = [c for c in columns if not isinstance(record, dict) or c not in record]
                    if missing:
                        keys = list(record) if isinstance(record, dict) else []
                        raise _missing_column(missing[0], keys, f"{file} (line {number})")
                    yield tuple(str(record[c]) for c in columns)

    def iter_texts(self) -> Iterator[str]:
        for (text,) in self.iter_records((self.text_column,)):
            yield text


class ParquetSource(TextSource):
    """A ``.parquet`` file (or a folder of them); the document is the ``text_column`` cell."""

    def __init__(self, path: str | Path, text_column: str = "text"):
        import pyarrow.parquet as pq

        self.path, self.text_column = Path(path), text_column
        self.files = _files(self.path, (".parquet",))
        for file in self.files:
            names = pq.ParquetFile(file).schema_arrow.names
            if text_column not in names:
                raise _missing_column(text_column, names, str(file))

    def describe(self) -> dict:
        return {"kind": "parquet", "path": str(self.path.resolve()), "text_column": self.text_column}

    def iter_texts(self) -> Iterator[str]:
        import pyarrow.parquet as pq

        for file in self.files:
            for batch in pq.ParquetFile(file).iter_batches(batch_size=1024, columns=[self.text_column]):
                yield from (str(t) for t in batch.column(0).to_pylist() if t is not None)


class HFDatasetSource(TextSource):
    """A Hugging Face ``datasets`` dataset by name (or local path / builder with ``data_files``)."""

    def __init__(self, name: str, split: str = "train", text_column: str = "text", config: str | None = None,
                 streaming: bool = True, data_files=None):
        self.name, self.split, self.text_column = name, split, text_column
        self.config, self.streaming, self.data_files = config, bool(streaming), data_files

    def describe(self) -> dict:
        return {"kind": "hf", "name": self.name, "config": self.config, "split": self.split,
                "text_column": self.text_column, "data_files": self.data_files}

    def _dataset(self):
        try:
            import datasets
        except ImportError as exc:
            raise SaelabError("HF dataset sources need the 'datasets' package: pip install datasets") from exc
        try:
            return datasets.load_dataset(self.name, self.config, split=self.split, streaming=self.streaming,
                                         data_files=self.data_files)
        except (FileNotFoundError, ValueError, ConnectionError) as exc:
            raise SaelabError(f"could not open dataset {self.name!r} (split {self.split!r}): {exc}") from exc

    def iter_texts(self) -> Iterator[str]:
        dataset = self._dataset()
        names = getattr(dataset, "column_names", None)
        if names is not None and self.text_column not in names:
            raise _missing_column(self.text_column, names, f"dataset {self.name!r}")
        for record in dataset:
            if self.text_column not in record:
                raise _missing_column(self.text_column, list(record), f"dataset {self.name!r}")
            yield str(record[self.text_column])


class TokenArraySource(Source):
    """Pre-tokenized ids in ``.npy`` or ``.safetensors`` (``key``: tensor name, default the only one
    or ``input_ids``/``tokens``). 1-D: one token stream; 2-D: rows are windows or documents."""

    def __init__(self, path: str | Path, key: str | None = None, rows_are_windows: bool = True):
        self.path, self.rows_are_windows = Path(path), bool(rows_are_windows)
        if self.path.suffix not in (".npy", ".safetensors"):
            raise ConfigError(f"token array {str(self.path)!r}: accepted files are .npy and .safetensors")
        if not self.path.is_file():
            raise SaelabError(f"token array file {str(self.path)!r} does not exist")
        self.key = key
        self.tokens = self._load()
        if self.tokens.ndim not in (1, 2) or not np.issubdtype(self.tokens.dtype, np.integer):
            raise ConfigError(f"token array {str(self.path)!r} has shape {self.tokens.shape} and dtype "
                              f"{self.tokens.dtype}; a 1-D or 2-D integer array is expected")
        self.continuous = self.tokens.ndim == 1

    def _load(self) -> np.ndarray:
        """``.npy`` is memory-mapped; a safetensors tensor is read into memory."""
        if self.path.suffix == ".npy":
            try:
                return np.load(self.path, mmap_mode="r", allow_pickle=False)
            except ValueError as exc:
                raise CorruptFileError(f"{self.path} is not a readable .npy array: {exc}") from exc
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(self.path), framework="numpy") as fh:
                keys = list(fh.keys())
                key = self.key or (keys[0] if len(keys) == 1 else next(
                    (k for k in ("input_ids", "tokens") if k in keys), None))
                if key not in keys:
                    raise ConfigError(f"{self.path} has tensors {keys}; choose one with key= (got {self.key!r})")
                return fh.get_tensor(key)
        except SafetensorError as exc:
            raise CorruptFileError(f"{self.path} is not a readable safetensors file: {exc}") from exc

    def describe(self) -> dict:
        return {"kind": "tokens", "path": str(self.path.resolve()), "key": self.key, "rows_are_windows": self.rows_are_windows}

    def iter_token_documents(self, tokenizer) -> Iterator[np.ndarray]:
        tokens = self.tokens
        if tokens.ndim == 1:
            step = 1 << 16  # one continuous stream, handed out in pieces
            for start in range(0, len(tokens), step):
                yield np.asarray(tokens[start:start + step], dtype=np.int64)
            return
        for row in tokens:
            yield np.asarray(row, dtype=np.int64)

    def iter_ready_windows(self, context_size: int) -> Iterator[np.ndarray] | None:
        tokens = self.tokens
        if tokens.ndim != 2 or not self.rows_are_windows:
            return None
        if tokens.shape[1] != context_size:
            raise ConfigError(f"token array {str(self.path)!r} has rows of {tokens.shape[1]} tokens but the context "
                              f"size is {context_size}; set the context size to {tokens.shape[1]} or pass "
                              "rows_are_windows=False to repack the rows as documents")
        return (np.asarray(row, dtype=np.int64) for row in tokens)


SPEC_FORMS = "'toy', 'toy:SEED', 'hf:NAME[:CONFIG]', or a path to .txt/.jsonl/.parquet/.npy/.safetensors (or a folder)"


READ_TEXTS_POOL = 8  # read_texts draws its texts evenly from the first POOL x n of the source


def _spread(items: Iterator, n: int, spec: str, what: str) -> list:
    """``n`` of the first ``READ_TEXTS_POOL * n`` items, evenly spaced (all when there are fewer)."""
    import itertools

    check_range("n", n, 1, None, integer=True)
    pool = list(itertools.islice(items, READ_TEXTS_POOL * n))
    if not pool:
        raise ConfigError(f"{what} {spec!r} holds no non-empty text")
    return pool if len(pool) <= n else [pool[i * len(pool) // n] for i in range(n)]


def read_texts(spec: str, n: int, *, what: str = "source") -> list[str]:
    """``n`` non-empty texts (documents, paragraphs) of the text source ``spec`` (``open_source``),
    evenly spaced over its first ``READ_TEXTS_POOL * n`` texts (all of a shorter file), so that a
    file ordered by collection (``real/corpus/heldout.txt``: Python docs, then Jargon, then
    fortunes) is read across its parts; deterministic. A source of token ids is refused with the
    reason, since text-level concepts need the words."""
    source = open_source(spec)
    if not isinstance(source, TextSource):
        raise ConfigError(f"{what} {spec!r} holds token ids, not text; give a .txt/.jsonl/.parquet file or folder, "
                          "toy:SEED or hf:NAME")
    return _spread((t for t in source.iter_texts() if t and t.strip()), n, spec, what)


def has_column(spec: str, column: str) -> bool:
    """Whether ``spec`` is a .jsonl source whose first record holds ``column`` (e.g. the real
    corpus's ``collection``)."""
    source = open_source(spec)
    if not isinstance(source, JsonlSource):
        return False
    try:
        next(source.iter_records((column,)), None)
    except MissingColumnError:
        return False
    return True


def read_labeled_texts(spec: str, n: int, label_column: str, *, what: str = "source") -> tuple[list[str], list[str]]:
    """(texts, labels): as ``read_texts`` for a .jsonl source, with each record's ``label_column``."""
    source = open_source(spec)
    if not isinstance(source, JsonlSource):
        raise ConfigError(f"{what} {spec!r} has no columns; labelled texts need a .jsonl file with a "
                          f"{label_column!r} field")
    rows = _spread((r for r in source.iter_records((source.text_column, label_column)) if r[0].strip()), n,
                   spec, what)
    return [text for text, _ in rows], [label for _, label in rows]


def open_source(spec: str, *, text_column: str = "text", split: str = "train", txt_split: str = "paragraph",
                seed: int = 0, token_key: str | None = None) -> Source:
    """A source from a string: ``toy`` / ``toy:SEED``, ``hf:NAME[:CONFIG]``, or a file / folder path."""
    if spec == "toy" or spec.startswith("toy:"):
        seed_text = spec.partition(":")[2]
        if seed_text and not seed_text.isdigit():
            raise ConfigError(f"source {spec!r}: the toy seed must be a whole number")
        return ToySource(int(seed_text) if seed_text else seed)
    if spec.startswith("hf:"):
        name, _, config = spec[3:].partition(":")
        return HFDatasetSource(name, split=split, text_column=text_column, config=config or None)
    path = Path(spec).expanduser()
    if not path.exists():
        raise ConfigError(f"source {spec!r} is not accepted: no such file or folder; accepted: {SPEC_FORMS}")
    suffixes = {path.suffix} if path.is_file() else {p.suffix for p in path.iterdir()}
    if ".txt" in suffixes:
        return TextFileSource(path, txt_split)
    if ".jsonl" in suffixes:
        return JsonlSource(path, text_column)
    if ".parquet" in suffixes:
        return ParquetSource(path, text_column)
    if path.is_file() and path.suffix in (".npy", ".safetensors"):
        return TokenArraySource(path, token_key)
    raise ConfigError(f"source {spec!r}: unsupported file type; accepted: {SPEC_FORMS}")
