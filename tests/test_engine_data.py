"""Data: tokeniser, vocabulary order, batching, local files, the hub fallback, data errors."""
from __future__ import annotations

import lzma
import sys
import time
import types
from importlib import resources
from pathlib import Path

import pytest
import torch

from ashem_engine import data
from ashem_engine.data import (SPLIT_FILES, DataError, build_vocabulary, corpus_from_rows,
                               cut_lengths, describe_source, hub_reachable, load_corpus,
                               make_batches, read_hub_rows, read_local_rows, sample_counts,
                               tokenize)
from ashem_engine.settings import DataSettings, load_settings
from conftest import SHARED_DATA
from synthetic import synthetic_splits, write_corpus
from engine_support import single_thread  # noqa: F401  (autouse fixture)
from tiny import tiny_corpus

NAMES = {"train": "wiki.train.raw", "validation": "wiki.valid.raw", "test": "wiki.test.raw"}


def one_line(e: BaseException) -> str:
    message = str(e)
    assert message and "\n" not in message, f"not one line: {message!r}"
    return message


def data_error(fn, *args, **kw) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kw)
    return one_line(info.value)


# -- batching ------------------------------------------------------------------------------

@pytest.mark.parametrize("length, expected", [(24, 1), (25, 2), (36, 2), (37, 3), (12, 0),
                                              (13, 1), (5, 0), (0, 0)])
def test_make_batches_counts_only_full_batches(length, expected):
    b = make_batches(list(range(length)), batch_size=3, seq_len=4)
    assert len(b) == expected
    assert tuple(b.x.shape) == tuple(b.y.shape) == (expected, 3, 4)
    assert b.x.dtype == b.y.dtype == torch.long
    assert b.tokens == expected * 12


def test_make_batches_rows_and_shift():
    stream = [100 + i for i in range(40)]  # 40 tokens, stride 12 -> 3 full batches
    b = make_batches(stream, batch_size=3, seq_len=4)
    assert len(b) == 3
    for k in range(3):
        for j in range(3):
            s = k * 3 * 4 + 4 * j  # batch k at k·batch·seq_len, row j seq_len·j further
            assert b.x[k, j].tolist() == stream[s:s + 4]
            assert b.y[k, j].tolist() == stream[s + 1:s + 5]
    assert torch.equal(b.x.reshape(-1)[1:], b.y.reshape(-1)[:-1])  # batches tile the stream


def test_tokenize_lowercases_and_splits_on_whitespace():
    assert tokenize([" The Cat\tsat ", "", " = = Title = = ", "A\u3000b"]) == \
        ["the", "cat", "sat", "=", "=", "title", "=", "=", "a", "b"]


def test_vocabulary_order_and_unknown_words():
    rows = {"train": ["The cat sat", " the DOG "], "validation": ["a cat ran", "fish"],
            "test": ["zebra cat unicorn fish"]}
    settings = DataSettings(train_samples=1, eval_fraction=1.0, seq_len=2, batch_size=1)
    corpus = corpus_from_rows(rows, settings, "hand-made")
    # <unk>, <pad>, then first occurrence over ALL of train, then validation (not the cut)
    assert corpus.vocab.words == ["<unk>", "<pad>", "the", "cat", "sat", "dog", "a", "ran",
                                  "fish"]
    assert corpus.vocab.encode(["zebra", "cat", "unicorn", "fish"]) == [0, 3, 0, 8]
    test = corpus.batches["test"]
    assert test.x.tolist() == [[[0, 3]]] and test.y.tolist() == [[[3, 0]]]
    # each split is cut to samples × (seq_len + 1) tokens: 3 tokens -> one batch of one row
    assert corpus.batches["train"].x.tolist() == [[[2, 3]]]
    assert corpus.batches["train"].y.tolist() == [[[3, 4]]]
    assert corpus.batches["validation"].x.tolist() == [[[6, 3]]]


def test_build_vocabulary_is_first_occurrence():
    v = build_vocabulary(["b", "a", "b"], ["c", "a", "d"])
    assert v.words == ["<unk>", "<pad>", "b", "a", "c", "d"]
    assert v.decode(v.encode(["d", "b", "?"])) == ["d", "b", "<unk>"]


def test_cut_lengths_default():
    assert cut_lengths(DataSettings()) == {"train": 330000, "validation": 66000,
                                           "test": 66000}


def test_tiny_corpus_is_usable():
    s = load_settings(None, ["data.train_samples=200", "data.eval_fraction=0.25",
                             "data.seq_len=8", "data.batch_size=4"])
    c = tiny_corpus(s)
    assert len(c.batches["train"]) == (200 * 9 - 1) // 32
    assert len(c.batches["validation"]) == (50 * 9 - 1) // 32


# -- the real corpus -----------------------------------------------------------------------

@pytest.mark.skipif(not (SHARED_DATA / "wiki.train.raw").is_file(),
                    reason="shared WikiText-2 files not present")
def test_load_corpus_on_wikitext2():
    corpus = load_corpus(DataSettings(path=str(SHARED_DATA)))
    assert len(corpus.vocab) == 69830
    assert corpus.vocab.words[:2] == ["<unk>", "<pad>"]
    # SPEC_NOTES says 160 train batches, but its own batching rule (and the reference code)
    # gives (330000 - 1) // 2048 = 161 full batches on the 330,000-token train stream.
    assert len(corpus.batches["train"]) == 161
    assert len(corpus.batches["validation"]) == 32
    assert corpus.batches["validation"].tokens == 65536
    assert corpus.source == str(SHARED_DATA)


# -- local files and their errors ----------------------------------------------------------

def settings_for(directory: Path, *extra: str):
    return load_settings(None, [f"data.path={directory}", "data.train_samples=200",
                                "data.eval_fraction=0.25", "data.seq_len=8",
                                "data.batch_size=4", *extra]).data


def test_load_corpus_from_local_directory_matches_rows(tmp_path):
    directory = write_corpus(tmp_path / "d", synthetic_splits())
    settings = settings_for(directory)
    from_files = load_corpus(settings, reachable=lambda: pytest.fail("hub consulted"))
    from_rows = corpus_from_rows(synthetic_splits(), settings, "rows")
    assert from_files.vocab.words == from_rows.vocab.words
    for split in NAMES:
        assert torch.equal(from_files.batches[split].x, from_rows.batches[split].x)
        assert torch.equal(from_files.batches[split].y, from_rows.batches[split].y)


def test_ashem_data_environment_variable(tmp_path, monkeypatch):
    directory = write_corpus(tmp_path / "env", synthetic_splits())
    monkeypatch.setenv("ASHEM_DATA", str(directory))
    settings = load_settings(None, ["data.train_samples=200", "data.eval_fraction=0.25",
                                    "data.seq_len=8", "data.batch_size=4"]).data
    assert load_corpus(settings, reachable=lambda: False).source == str(directory)


def test_missing_directory(tmp_path):
    message = data_error(load_corpus, settings_for(tmp_path / "nowhere"))
    assert "data.path" in message and "nowhere" in message


def test_missing_file(tmp_path):
    directory = write_corpus(tmp_path / "d", synthetic_splits())
    (directory / "wiki.valid.raw").unlink()
    message = data_error(load_corpus, settings_for(directory))
    assert "data.path" in message and "wiki.valid.raw" in message


def test_non_utf8_bytes(tmp_path):
    directory = write_corpus(tmp_path / "d", synthetic_splits())
    train = directory / "wiki.train.raw"
    train.write_bytes(b" the cat \xff\xfe sees \n" + train.read_bytes())
    message = data_error(load_corpus, settings_for(directory))
    assert "wiki.train.raw" in message and "UTF-8" in message and "offset 9" in message


def test_non_utf8_byte_at_end_of_file(tmp_path):
    directory = write_corpus(tmp_path / "d", synthetic_splits())
    test = directory / "wiki.test.raw"
    test.write_bytes(test.read_bytes() + b" the euro \xe2\x82")  # cut inside a character
    message = data_error(load_corpus, settings_for(directory))
    assert "wiki.test.raw" in message and "UTF-8" in message


def test_split_without_words(tmp_path):
    splits = synthetic_splits()
    splits["validation"] = [" ", "", "   "]
    directory = write_corpus(tmp_path / "d", splits)
    message = data_error(load_corpus, settings_for(directory))
    assert "validation" in message and "no words" in message


def test_empty_file(tmp_path):
    directory = write_corpus(tmp_path / "d", synthetic_splits())
    (directory / "wiki.valid.raw").write_bytes(b"")
    message = data_error(load_corpus, settings_for(directory))
    assert "validation" in message


def test_corpus_too_small_for_one_batch():
    splits = synthetic_splits()
    splits["validation"] = ["only a few words here"]
    settings = settings_for(Path("unused"))
    message = data_error(corpus_from_rows, splits, settings, "tiny")
    assert "validation" in message and "too small for one batch" in message
    assert "data.batch_size=4" in message and "data.seq_len=8" in message and "33" in message


def test_read_local_rows_keeps_one_row_per_line(tmp_path):
    directory = write_corpus(tmp_path / "d", {"train": [" a b ", " ", " c "],
                                              "validation": [" d "], "test": [" e "]})
    rows = read_local_rows(directory)
    assert [tokenize(rows[s]) for s in NAMES] == [["a", "b", "c"], ["d"], ["e"]]
    assert len(rows["train"]) == 3


# -- the hub -------------------------------------------------------------------------------

def test_hub_unreachable_is_a_quick_data_error():
    settings = DataSettings()
    started = time.monotonic()
    message = data_error(read_hub_rows, settings, reachable=lambda: False)
    assert time.monotonic() - started < 2
    assert "data.path" in message and "ASHEM_DATA" in message


def test_load_corpus_without_path_goes_to_the_hub(monkeypatch):
    monkeypatch.delenv("ASHEM_DATA", raising=False)
    asked = []
    other = DataSettings(hub_config="wikitext-103-raw-v1")  # not the embedded configuration
    message = data_error(load_corpus, other, reachable=lambda: asked.append(1) or False)
    assert asked == [1] and "data.path" in message


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_hub_reachable_respects_offline_mode(monkeypatch, variable):
    monkeypatch.setenv(variable, "1")
    started = time.monotonic()
    assert hub_reachable(timeout=30) is False
    assert time.monotonic() - started < 0.5


# -- the embedded copy ---------------------------------------------------------------------

@pytest.mark.skipif(not (SHARED_DATA / "wiki.train.raw").is_file(),
                    reason="shared WikiText-2 files not present")
def test_the_embedded_copy_is_the_shared_data_byte_for_byte():
    folder = resources.files("ashem_engine") / "corpus"
    for name in SPLIT_FILES.values():
        shipped = lzma.decompress((folder / f"{name}.xz").read_bytes())
        assert shipped == (SHARED_DATA / name).read_bytes(), name


@pytest.mark.skipif(not (SHARED_DATA / "wiki.train.raw").is_file(),
                    reason="shared WikiText-2 files not present")
def test_the_embedded_corpus_equals_the_one_read_from_files(monkeypatch):
    """Same vocabulary and the same batches, so every figure of a run is the same."""
    monkeypatch.delenv("ASHEM_DATA", raising=False)
    embedded = load_corpus(DataSettings(), reachable=lambda: pytest.fail("hub consulted"))
    files = load_corpus(DataSettings(path=str(SHARED_DATA)))
    assert embedded.source == "embedded:wikitext/wikitext-2-raw-v1"
    assert embedded.vocab.words == files.vocab.words
    for split in SPLIT_FILES:
        assert torch.equal(embedded.batches[split].x, files.batches[split].x), split
        assert torch.equal(embedded.batches[split].y, files.batches[split].y), split


def test_where_data_comes_from(monkeypatch, tmp_path):
    monkeypatch.delenv("ASHEM_DATA", raising=False)
    assert describe_source(DataSettings()) == "embedded:wikitext/wikitext-2-raw-v1"
    assert describe_source(DataSettings(hub_config="wikitext-103-raw-v1")) == \
        "hub:wikitext/wikitext-103-raw-v1"
    monkeypatch.setenv("ASHEM_DATA", str(tmp_path))
    assert describe_source(DataSettings()) == str(tmp_path)
    assert describe_source(DataSettings(path="/d")) == "/d"  # data.path comes first


def test_a_damaged_embedded_copy_is_one_line(monkeypatch):
    monkeypatch.setitem(data.EMBEDDED_SHA256, "validation", "0" * 64)
    message = data_error(data.read_embedded_rows)
    assert "wiki.valid.raw" in message and "damaged" in message and "\n" not in message


# -- scale: whole splits, a capped vocabulary, other file names, a hub text column -------------

@pytest.mark.parametrize("train, evaluation, expected", [
    (200, -1, {"train": 200, "validation": 50, "test": 50}),  # today's rule, fraction 0.25
    (0, -1, {"train": None, "validation": None, "test": None}),  # whole splits throughout
    (200, 0, {"train": 200, "validation": None, "test": None}),
    (0, 10, {"train": None, "validation": 10, "test": 10}),
])
def test_sample_counts_none_is_the_whole_split(train, evaluation, expected):
    settings = DataSettings(train_samples=train, eval_samples=evaluation, eval_fraction=0.25)
    assert sample_counts(settings) == expected


def test_default_sample_counts_are_todays():
    assert sample_counts(DataSettings()) == {"train": 10000, "validation": 2000, "test": 2000}


@pytest.mark.parametrize("extra, cut", [
    (["data.train_samples=0"], {}),
    (["data.eval_samples=0"], {"train": 200 * 9}),
    (["data.train_samples=0", "data.eval_samples=30"], {"validation": 30 * 9, "test": 30 * 9}),
])
def test_whole_splits_give_every_full_batch(extra, cut):
    settings = settings_for(Path("unused"), *extra)
    corpus = corpus_from_rows(synthetic_splits(), settings, "synthetic")
    for split, rows in synthetic_splits().items():
        tokens = min(len(tokenize(rows)), cut.get(split, 10 ** 9))
        assert len(corpus.batches[split]) == (tokens - 1) // 32, split
        assert corpus.batches[split].tokens == len(corpus.batches[split]) * 32


def test_whole_train_split_is_longer_than_the_cut_one():
    whole = corpus_from_rows(synthetic_splits(), settings_for(Path("u"), "data.train_samples=0"),
                             "synthetic")
    cut = tiny_corpus(load_settings(None, ["data.train_samples=200", "data.eval_fraction=0.25",
                                           "data.seq_len=8", "data.batch_size=4"]))
    assert len(whole.batches["train"]) > len(cut.batches["train"])
    n = len(cut.batches["train"])
    assert torch.equal(whole.batches["train"].x[:n], cut.batches["train"].x)  # same start


def test_capped_vocabulary_keeps_the_most_frequent_words():
    train, validation = ["b", "a", "b", "c", "c", "c", "e"], ["d", "a", "e"]
    # counts over train and validation: a 2, b 2, c 3, e 2, d 1
    assert build_vocabulary(train, validation, size=3).words == ["<unk>", "<pad>", "c"]
    # a tie of three at count 2: the earliest first occurrence (b, then a) wins
    assert build_vocabulary(train, validation, size=4).words == ["<unk>", "<pad>", "b", "c"]
    assert build_vocabulary(train, validation, size=5).words == \
        ["<unk>", "<pad>", "b", "a", "c"]  # kept words stay in order of first occurrence
    v = build_vocabulary(train, validation, size=4)
    assert v.encode(["a", "b", "c", "d", "e", "zebra"]) == [0, 2, 3, 0, 0, 0]


def test_a_cap_at_or_above_the_vocabulary_changes_nothing():
    train, validation = ["b", "a", "b", "c"], ["d", "a"]
    full = build_vocabulary(train, validation).words
    assert len(full) == 6
    for size in (0, 6, 7, 1000):
        assert build_vocabulary(train, validation, size=size).words == full


def test_unk_in_the_text_takes_no_place_of_the_cap():
    words = build_vocabulary(["<unk>", "<unk>", "<unk>", "x", "y", "x"], size=3).words
    assert words == ["<unk>", "<pad>", "x"]


def test_vocab_size_caps_the_corpus_and_maps_the_rest_to_unk():
    settings = settings_for(Path("unused"), "data.vocab_size=12")
    capped = corpus_from_rows(synthetic_splits(), settings, "synthetic")
    full = corpus_from_rows(synthetic_splits(), settings_for(Path("unused")), "synthetic")
    assert len(capped.vocab) == 12 and len(full.vocab) > 12
    train = [t for s in ("train", "validation") for t in tokenize(synthetic_splits()[s])]
    counts = {w: train.count(w) for w in set(train)}
    lowest_kept = min(counts[w] for w in capped.vocab.words[2:])
    assert all(counts[w] <= lowest_kept for w in full.vocab.words[2:]
               if w not in capped.vocab.index)
    y_full, y_capped = full.batches["train"].y, capped.batches["train"].y
    dropped = torch.tensor([w not in capped.vocab.index for w in full.vocab.words])
    assert torch.equal(y_capped == 0, dropped[y_full] | (y_full == 0))  # <unk> is id 0
    assert capped.batches["train"].tokens == full.batches["train"].tokens


def test_split_files_under_other_names(tmp_path):
    directory = tmp_path / "plain"
    directory.mkdir()
    names = {"train": "train.txt", "validation": "dev.txt", "test": "held out.txt"}
    for split, rows in synthetic_splits().items():
        (directory / names[split]).write_text("\n".join(rows), encoding="utf-8")
    settings = settings_for(directory, "data.train_file=train.txt",
                            "data.validation_file=dev.txt", "data.test_file='held out.txt'")
    corpus = load_corpus(settings, reachable=lambda: pytest.fail("hub consulted"))
    rows = corpus_from_rows(synthetic_splits(), settings, "rows")
    assert corpus.vocab.words == rows.vocab.words
    for split in NAMES:
        assert torch.equal(corpus.batches[split].x, rows.batches[split].x), split
    (directory / "dev.txt").unlink()
    message = data_error(load_corpus, settings)
    assert "dev.txt" in message and "data.validation_file" in message


class FakeSplit:
    """A hub split: its column names and a column's values."""

    def __init__(self, columns: dict[str, list[str]]):
        self.columns = columns
        self.column_names = list(columns)

    def __getitem__(self, column: str) -> list[str]:
        return self.columns[column]


def fake_datasets(monkeypatch, splits: dict[str, dict[str, list[str]]]) -> list:
    """Puts a stand-in `datasets` module in place (the hub is unreachable here); returns the
    list of (name, config) it was asked to load."""
    asked: list = []
    quiet = types.SimpleNamespace(set_verbosity_error=lambda: None,
                                  disable_progress_bar=lambda: None)

    def load_dataset(name, config):
        asked.append((name, config))
        return {split: FakeSplit(columns) for split, columns in splits.items()}

    module = types.SimpleNamespace(utils=types.SimpleNamespace(logging=quiet),
                                   load_dataset=load_dataset)
    monkeypatch.setitem(sys.modules, "datasets", module)
    return asked


HUB_SPLITS = {split: {"id": ["1", "2"], "content": [f"{split} one", f"{split} two"]}
              for split in ("train", "validation", "test")}


def test_hub_rows_come_from_the_named_text_column(monkeypatch):
    asked = fake_datasets(monkeypatch, HUB_SPLITS)
    settings = DataSettings(hub_name="someone/corpus", hub_config="plain",
                            hub_text_column="content")
    rows = read_hub_rows(settings, reachable=lambda: True)
    assert asked == [("someone/corpus", "plain")]
    assert rows == {s: [f"{s} one", f"{s} two"] for s in ("train", "validation", "test")}


def test_a_missing_hub_text_column_names_the_columns(monkeypatch):
    fake_datasets(monkeypatch, HUB_SPLITS)
    message = data_error(read_hub_rows, DataSettings(hub_config="other"), reachable=lambda: True)
    assert "data.hub_text_column = 'text'" in message and "its columns: id, content" in message


def test_a_missing_hub_split_names_the_splits(monkeypatch):
    fake_datasets(monkeypatch, {"train": HUB_SPLITS["train"], "dev": HUB_SPLITS["test"]})
    settings = DataSettings(hub_text_column="content")
    message = data_error(read_hub_rows, settings, reachable=lambda: True)
    assert "no validation split" in message and "it has train, dev" in message
