"""The token cache: a corpus tokenised once, as nanoGPT's train.bin. One directory per corpus
and vocabulary cap holds the vocabulary and each split's whole token stream (int64 ids, before
any cut to a sample count), memory-mapped by every process of a node: a process holds only the
pages it reads. Tokenising streams row by row, with data.py's vocabulary and ids exactly."""
from __future__ import annotations

import collections
import hashlib
import json
import os
import shutil
import tempfile
from array import array
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from .data import (EMBEDDED, EMBEDDED_SHA256, PAD, SPLITS, UNK, Corpus, DataError, Vocabulary,
                   batch_views, checked_corpus, cut_lengths, resolve_local_path, split_files)
from .settings import DataSettings

VERSION = 1  # of the cache's layout and tokenisation; another version is another directory
VOCAB_FILE = "vocab.json"
FLUSH = 1 << 20  # ids written per chunk


def cache_root(settings: DataSettings) -> Path:
    """data.cache_dir, else $ASHEM_CACHE, else ~/.cache/ashem."""
    chosen = settings.cache_dir or os.environ.get("ASHEM_CACHE", "")
    return Path(chosen).expanduser() if chosen else Path.home() / ".cache" / "ashem"


def corpus_key(settings: DataSettings, source: str) -> str:
    """What the ids depend on: the text (files by size and modification time, the shipped
    copy by checksum, a hub dataset by name), the vocabulary cap and the layout's version."""
    local = resolve_local_path(settings)
    if local is not None:
        text = [[name, *_stamp(local / name)] for name in split_files(settings).values()]
    elif source.startswith("embedded:"):
        text = sorted(EMBEDDED_SHA256.items())
    else:
        text = [settings.hub_name, settings.hub_config, settings.hub_text_column]
    described = json.dumps({"version": VERSION, "source": source, "text": text,
                            "vocab_size": settings.vocab_size}, sort_keys=True)
    return hashlib.sha256(described.encode()).hexdigest()[:24]


def _stamp(path: Path) -> list:
    try:
        status = path.stat()
    except OSError:
        return [None, None]  # read_rows names the missing file
    return [status.st_size, status.st_mtime_ns]


def cached_corpus(settings: DataSettings, source: str,
                  read_rows: Callable[[], dict[str, list[str]]], builds: bool,
                  wait: Callable[[], None]) -> Corpus:
    """The corpus from its cache, which this process writes first when `builds` and it is
    missing; `wait()` runs on every process after that (a barrier under torchrun)."""
    where = cache_root(settings) / corpus_key(settings, source)
    failure = None
    if builds and not (where / VOCAB_FILE).exists():
        try:
            write_cache(where, read_rows(), settings.vocab_size, source)
        except (DataError, OSError) as e:
            failure = e
    wait()
    if isinstance(failure, OSError):
        raise DataError(f"cannot write the token cache {str(where)!r} ({failure.strerror}); "
                        "set data.cache_dir or $ASHEM_CACHE to a writable directory") from None
    if failure is not None:
        raise failure
    if not (where / VOCAB_FILE).exists():
        raise DataError(f"the token cache {str(where)!r} was not written (another process "
                        "of this run failed to read the data)")
    return corpus_from_cache(where, settings, source)


def corpus_from_cache(where: Path, settings: DataSettings, source: str) -> Corpus:
    vocab = Vocabulary(json.loads((where / VOCAB_FILE).read_text(encoding="utf-8")))
    lengths, batches, kept = cut_lengths(settings), {}, {}
    for split in SPLITS:
        stream = _mapped(where / f"{split}.bin")[: lengths[split]]
        kept[split] = len(stream)
        batches[split] = batch_views(stream, settings.batch_size, settings.seq_len)
    return checked_corpus(vocab, batches, settings, source, kept)


def _mapped(path: Path) -> torch.Tensor:
    """A file of int64 ids as a tensor over its pages (copy-on-write: never written back)."""
    if path.stat().st_size == 0:
        return torch.zeros(0, dtype=torch.long)
    return torch.from_numpy(np.memmap(path, dtype=np.int64, mode="c"))


def write_cache(where: Path, rows: dict[str, list[str]], cap: int, source: str) -> None:
    """Tokenises every split into a new directory, then puts it in place in one rename."""
    where.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{where.name}-", dir=where.parent))
    try:
        vocab = stream_vocabulary(rows, cap, source)
        for split in SPLITS:
            write_ids(building / f"{split}.bin", rows[split], vocab)
        (building / VOCAB_FILE).write_text(json.dumps(vocab.words), encoding="utf-8")
        try:
            os.rename(building, where)
        except OSError:  # another process put the same cache in place first
            if not (where / VOCAB_FILE).exists():
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)


def stream_vocabulary(rows: dict[str, list[str]], cap: int, source: str) -> Vocabulary:
    """data.build_vocabulary over the train and validation rows, one row at a time."""
    seen, counts = dict.fromkeys([UNK, PAD]), collections.Counter()
    for split in ("train", "validation"):
        words_in_split = 0
        for row in rows[split]:
            words = row.lower().split()
            words_in_split += len(words)
            seen.update(dict.fromkeys(words))
            if cap:
                counts.update(words)
        if not words_in_split:
            raise DataError(f"the {split} split of {source} holds no words")
    words = list(seen)
    if cap <= 0 or cap >= len(words):
        return Vocabulary(words)
    ranked = sorted(words[2:], key=lambda word: -counts[word])  # stable: ties keep order
    kept = set(ranked[: cap - 2])
    return Vocabulary([UNK, PAD, *(word for word in words[2:] if word in kept)])


def write_ids(path: Path, rows: Iterable[str], vocab: Vocabulary) -> None:
    """Vocabulary.encode of every row's words, appended to `path` in chunks."""
    ids = collections.defaultdict(int, vocab.index)  # an unknown word reads as <unk> (0)
    chunk = array("q")
    with open(path, "wb") as out:
        for row in rows:
            chunk.extend(map(ids.__getitem__, row.lower().split()))
            if len(chunk) >= FLUSH:
                chunk.tofile(out)
                chunk = array("q")
        chunk.tofile(out)
