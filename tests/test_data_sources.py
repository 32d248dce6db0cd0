"""Text sources, pre-tokenized arrays, HF datasets (local, no downloads), packing and special tokens."""

from __future__ import annotations

import json

import numpy as np
import pytest

from saelab.data.packing import PackingConfig, iter_windows, pack_windows, special_token_mask
from saelab.data.sources import (
    HFDatasetSource,
    JsonlSource,
    MissingColumnError,
    ParquetSource,
    TextFileSource,
    TokenArraySource,
    ToySource,
    open_source,
)
from saelab.errors import ConfigError, SaelabError

BOS, EOS = 0, 1


@pytest.fixture(scope="module")
def tokenizer():
    from saelab.toy.tokenizer import build_hf_tokenizer

    return build_hf_tokenizer()


def docs(*lengths: int, start: int = 10) -> list[np.ndarray]:
    out, next_id = [], start
    for n in lengths:
        out.append(np.arange(next_id, next_id + n))
        next_id += n
    return out


def test_packing_puts_bos_before_documents_and_windows_without_doubling():
    # stream: BOS 10 11 12 | BOS 13 14 15 16 17 18 | BOS 19 20; the continuation 16.. gets its own BOS
    windows = [w.tolist() for w in pack_windows(docs(3, 6, 2), PackingConfig(context_size=4), bos_id=BOS)]
    assert windows == [[BOS, 10, 11, 12], [BOS, 13, 14, 15], [BOS, 16, 17, 18]]  # [BOS, 19, 20] is incomplete


def test_packing_with_eos_separator_and_without_bos():
    config = PackingConfig(context_size=3, prepend_bos=False, separator="eos")
    windows = [w.tolist() for w in pack_windows(docs(2, 3), config, bos_id=None, eos_id=EOS)]
    assert windows == [[10, 11, EOS], [12, 13, 14]]
    with pytest.raises(ConfigError, match="needs a BOS token"):
        list(pack_windows(docs(2), PackingConfig(context_size=3), bos_id=None))
    with pytest.raises(ConfigError, match="separator='eol' is not accepted; choose one of: bos, eos, none"):
        PackingConfig(separator="eol")
    with pytest.raises(ConfigError, match="context_size=1 is out of range"):
        PackingConfig(context_size=1)


def test_special_token_mask_marks_bos_eos_pad():
    tokens = np.array([[0, 5, 1, 2, 7]])
    assert special_token_mask(tokens, [0, 1, 2]).tolist() == [[True, False, True, True, False]]


def test_toy_source_tokenizes_into_the_documents_words(tokenizer):
    from saelab.toy.corpus import make_document

    first = next(ToySource(seed=3).iter_token_documents(tokenizer))
    assert first.tolist() == make_document(3, 0).token_ids
    window = next(iter_windows(ToySource(3), tokenizer, PackingConfig(context_size=16), BOS))
    assert window.tolist() == [BOS, *make_document(3, 0).token_ids[:15]]


def test_txt_files_split_into_paragraphs_lines_or_files(tmp_path, tokenizer):
    (tmp_path / "a.txt").write_text("the cat\nsat\n\nthe dog\n")
    (tmp_path / "b.txt").write_text("one more\n")
    assert list(TextFileSource(tmp_path).iter_texts()) == ["the cat\nsat", "the dog", "one more"]
    assert list(TextFileSource(tmp_path, "line").iter_texts()) == ["the cat", "sat", "the dog", "one more"]
    assert len(list(TextFileSource(tmp_path / "a.txt", "file").iter_texts())) == 1
    assert isinstance(open_source(str(tmp_path)), TextFileSource)
    with pytest.raises(ConfigError, match="split='sentence'"):
        TextFileSource(tmp_path, "sentence")


def test_jsonl_reads_the_named_column_and_names_the_columns_that_exist(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"body": f"doc {i}", "id": i}) for i in range(3)) + "\n")
    assert list(JsonlSource(path, "body").iter_texts()) == ["doc 0", "doc 1", "doc 2"]
    with pytest.raises(MissingColumnError, match="text column 'text' does not exist.*columns are: body, id"):
        list(open_source(str(path)).iter_texts())


def test_parquet_reads_the_named_column_and_refuses_a_missing_one(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"content": ["a b", "c d e"], "n": [1, 2]}), path)
    assert list(ParquetSource(path, "content").iter_texts()) == ["a b", "c d e"]
    with pytest.raises(MissingColumnError, match="columns are: content, n"):
        ParquetSource(path, "text")


def test_hf_dataset_by_local_path_streams_and_checks_the_column(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "train.jsonl").write_text("\n".join(json.dumps({"story": f"tale {i}"}) for i in range(5)) + "\n")
    source = open_source(f"hf:{folder}", text_column="story")
    assert isinstance(source, HFDatasetSource) and source.streaming
    assert list(source.iter_texts()) == [f"tale {i}" for i in range(5)]
    with pytest.raises(MissingColumnError, match="columns are: story"):
        list(HFDatasetSource(str(folder), text_column="text").iter_texts())


def test_token_arrays_stream_rows_or_windows(tmp_path, tokenizer):
    stream = np.arange(10, 30, dtype=np.int32)
    np.save(tmp_path / "s.npy", stream)
    source = open_source(str(tmp_path / "s.npy"))
    windows = [w.tolist() for w in iter_windows(source, None, PackingConfig(context_size=5), BOS)]
    assert windows[:2] == [[BOS, 10, 11, 12, 13], [BOS, 14, 15, 16, 17]]  # continuous: no separators
    rows = np.arange(12, dtype=np.int64).reshape(3, 4)
    from safetensors.numpy import save_file

    save_file({"input_ids": rows, "other": rows[:1]}, str(tmp_path / "r.safetensors"))
    source = TokenArraySource(tmp_path / "r.safetensors")
    assert [w.tolist() for w in iter_windows(source, None, PackingConfig(context_size=4), BOS)] == rows.tolist()
    with pytest.raises(ConfigError, match="rows of 4 tokens but the context size is 8"):
        list(iter_windows(source, None, PackingConfig(context_size=8), BOS))
    repacked = TokenArraySource(tmp_path / "r.safetensors", rows_are_windows=False)
    assert next(iter_windows(repacked, None, PackingConfig(context_size=3), BOS)).tolist() == [BOS, 0, 1]
    np.save(tmp_path / "f.npy", np.ones(4, dtype=np.float32))
    with pytest.raises(ConfigError, match="integer array"):
        TokenArraySource(tmp_path / "f.npy")


def test_source_specs_are_checked(tmp_path):
    assert open_source("toy:7").describe()["seed"] == 7
    with pytest.raises(ConfigError, match="no such file or folder; accepted: 'toy'"):
        open_source(str(tmp_path / "nothing.txt"))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ConfigError, match="unsupported file type"):
        open_source(str(tmp_path / "x.csv"))
    with pytest.raises(SaelabError, match="no tokenizer"):
        next(ToySource().iter_token_documents(None))
