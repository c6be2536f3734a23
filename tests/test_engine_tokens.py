"""The token cache (tokens.py): the corpus it gives is the one read from rows, its splits are
views of memory-mapped files read once, and what goes wrong is one line. And the mining
threshold is torch.quantile's, bit for bit, past torch.quantile's size limit."""
from __future__ import annotations

import os

import pytest
import torch

from synthetic import synthetic_splits, write_corpus

from ashem_engine.data import DataError, corpus_from_rows, load_corpus
from ashem_engine.mining import quantile
from ashem_engine.settings import load_settings
from ashem_engine.tokens import cache_root, corpus_key


def data_settings(tmp_path, *extra: str):
    data = write_corpus(tmp_path / "data", synthetic_splits())
    return load_settings(None, [f"data.path={data}", f"data.cache_dir={tmp_path / 'cache'}",
                                "data.train_samples=200", "data.seq_len=8",
                                "data.batch_size=4", *extra]).data


@pytest.mark.parametrize("cap", ["data.vocab_size=0", "data.vocab_size=40"])
def test_the_cached_corpus_is_the_corpus_read_from_rows(tmp_path, cap):
    settings = data_settings(tmp_path, cap)
    cached = load_corpus(settings)
    plain = corpus_from_rows(synthetic_splits(), settings, cached.source)
    assert cached.vocab.words == plain.vocab.words
    for split, batches in plain.batches.items():
        assert torch.equal(cached.batches[split].x, batches.x), split
        assert torch.equal(cached.batches[split].y, batches.y), split
    assert cached.sizes == plain.sizes


def test_a_split_is_one_mapped_stream_read_once(tmp_path, monkeypatch):
    settings = data_settings(tmp_path)
    first = load_corpus(settings)
    train = first.batches["train"]
    assert train.x.untyped_storage().data_ptr() == train.y.untyped_storage().data_ptr()
    assert train.y.data_ptr() - train.x.data_ptr() == 8  # y is x one token on
    import ashem_engine.data as data

    monkeypatch.setattr(data, "read_local_rows", lambda *a: pytest.fail("read again"))
    again = load_corpus(settings)  # from the cache: the text is not read
    assert torch.equal(again.batches["train"].x, train.x)
    (cache,) = [p for p in (tmp_path / "cache").iterdir()]
    assert sorted(f.name for f in cache.iterdir()) == [
        "test.bin", "train.bin", "validation.bin", "vocab.json"]


def test_another_text_or_vocabulary_cap_is_another_cache(tmp_path):
    settings = data_settings(tmp_path)
    source = load_corpus(settings).source
    capped = data_settings(tmp_path, "data.vocab_size=40")
    assert corpus_key(settings, source) != corpus_key(capped, source)
    before = corpus_key(settings, source)
    with open(os.path.join(settings.path, "wiki.train.raw"), "a") as f:
        f.write("\nnew words here\n")
    assert corpus_key(settings, source) != before
    assert "new" in load_corpus(settings).vocab.words


def test_the_cache_defaults_to_the_environment_then_the_home_directory(tmp_path, monkeypatch):
    settings = load_settings(None, []).data
    monkeypatch.setenv("ASHEM_CACHE", str(tmp_path))
    assert cache_root(settings) == tmp_path
    monkeypatch.delenv("ASHEM_CACHE")
    assert cache_root(settings) == cache_root(settings).home() / ".cache" / "ashem"


def test_an_unwritable_cache_is_one_line_naming_the_key(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    settings = data_settings(tmp_path, f"data.cache_dir={blocker}")
    with pytest.raises(DataError) as info:
        load_corpus(settings)
    message = str(info.value)
    assert "\n" not in message and "data.cache_dir" in message and str(blocker) in message


def test_an_empty_split_is_named_as_before(tmp_path):
    data = write_corpus(tmp_path / "data", {"train": ["a b c"] * 50, "validation": [" "],
                                            "test": ["x"]})
    settings = load_settings(None, [f"data.path={data}",
                                    f"data.cache_dir={tmp_path / 'cache'}"]).data
    with pytest.raises(DataError, match="the validation split of .* holds no words"):
        load_corpus(settings)


def test_the_quantile_is_torch_quantile_bit_for_bit():
    generator = torch.Generator().manual_seed(0)
    for n in (1, 2, 3, 10, 999, 4096):
        for values in (torch.rand(n, generator=generator),
                       torch.randint(0, 4, (n,), generator=generator).float() / 3):
            for q in (0.0, 0.005, 0.1, 0.5, 0.73, 0.995, 1.0):
                assert torch.equal(quantile(values, q), torch.quantile(values, q)), (n, q)


def test_the_quantile_of_more_values_than_torch_quantile_takes():
    n = (1 << 24) + 3
    values = torch.arange(n, dtype=torch.float32).flip(0)
    with pytest.raises(RuntimeError):
        torch.quantile(values, 0.5)
    # rank (n - 1) * 0.5 = 8388609.0: exactly the value 8388609
    assert float(quantile(values, 0.5)) == 8388609.0
    assert float(quantile(values, 0.0)) == 0.0 and float(quantile(values, 1.0)) == n - 1
