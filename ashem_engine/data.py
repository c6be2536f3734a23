"""Corpus loading (local files, the embedded copy, the hub), tokenising, vocabulary, batches.

The set-up is SPEC_NOTES' exactly: `row.lower().split()` per row; vocabulary `<unk>`, `<pad>`,
then words in order of first occurrence over the train rows and then the validation rows;
each split one flat token stream, cut to samples × (seq_len + 1) tokens; batch k starts at
token k · batch · seq_len and its row j at seq_len · j further on; only full batches are kept.
Beyond the spec: data.vocab_size keeps only the most frequent words (the rest read as
`<unk>`), and a sample count of 0 keeps a whole split.

A corpus is read through a token cache, made once (tokens.py)."""
from __future__ import annotations

import collections
import hashlib
import itertools
import logging
import lzma
import os
import socket
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from .settings import DataSettings

SPLIT_FILES = {"train": "wiki.train.raw", "validation": "wiki.valid.raw", "test": "wiki.test.raw"}
SPLITS = tuple(SPLIT_FILES)
UNK, PAD = "<unk>", "<pad>"
HUB_HOST = ("huggingface.co", 443)
EMBEDDED = ("wikitext", "wikitext-2-raw-v1")  # shipped in ashem_engine/corpus/, see its README
EMBEDDED_SHA256 = {
    "train": "6707892fa3788b5ab9ed78ab5ff37d9fe825f6011a2ad4fcd6a6d467f0e7da57",
    "validation": "4cd0f6876d07a413aa911261ff6d363c72d757d47f0fdd6015702014c89cb9c7",
    "test": "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08",
}


class DataError(Exception):
    """Missing, unreadable or unusable data. str(error) is one line meant for a person."""


@dataclass
class Vocabulary:
    words: list[str]

    def __post_init__(self) -> None:
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, tokens: Sequence[str]) -> list[int]:
        get = self.index.get
        return [get(t, 0) for t in tokens]

    def decode(self, ids: Sequence[int]) -> list[str]:
        return [self.words[i] for i in ids]


@dataclass
class Batches:
    """Full batches of one split: x and y are (batches, batch, seq_len) int64, in memory or
    views of a memory-mapped cache; `batch(i)` brings one to `device`."""

    x: torch.Tensor
    y: torch.Tensor
    device: torch.device = torch.device("cpu")

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def tokens(self) -> int:
        return self.y.numel()

    def batch(self, index: int, rows: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch `index` (its `rows`) on the device: x and y, each (rows, seq_len)."""
        return (self.x[index][rows].to(self.device, non_blocking=True),
                self.y[index][rows].to(self.device, non_blocking=True))

    def on(self, device: torch.device) -> "Batches":
        """The same batches, each brought to `device` when used (none moved now)."""
        return Batches(self.x, self.y, torch.device(device))


@dataclass
class Corpus:
    vocab: Vocabulary
    batches: dict[str, Batches]  # "train", "validation", "test"
    source: str

    def __post_init__(self) -> None:
        # Sizes are known up front, so reporting them reads no split's tokens.
        self.sizes = {k: (len(v), v.tokens) for k, v in dict.items(self.batches)}


def tokenize(rows: Sequence[str]) -> list[str]:
    return [token for row in rows for token in row.lower().split()]


def build_vocabulary(*token_lists: Sequence[str], size: int = 0) -> Vocabulary:
    """<unk>, <pad>, then every word in order of first occurrence. With size > 0, only the
    size - 2 most frequent words (of equal counts, the one seen first) stay, still in order
    of first occurrence, so a size at or above the full vocabulary's changes nothing."""
    words = list(dict.fromkeys(itertools.chain([UNK, PAD], *token_lists)))
    if size <= 0 or size >= len(words):
        return Vocabulary(words)
    counts = collections.Counter(itertools.chain(*token_lists))
    ranked = sorted(words[2:], key=lambda word: -counts[word])  # stable: ties keep order
    kept = set(ranked[: size - 2])
    return Vocabulary([UNK, PAD, *(word for word in words[2:] if word in kept)])


def make_batches(stream: Sequence[int], batch_size: int, seq_len: int) -> Batches:
    """x = tokens[s : s+seq_len] and y = tokens[s+1 : s+seq_len+1] for each row start s.
    Batch k's last row ends (exclusive) at (k+1)·batch·seq_len + 1, so there are
    (len - 1) // (batch·seq_len) full batches, and consecutive batches tile the stream."""
    views = batch_views(torch.as_tensor(stream, dtype=torch.long), batch_size, seq_len)
    return Batches(views.x.clone(), views.y.clone())


def batch_views(tokens: torch.Tensor, batch_size: int, seq_len: int) -> Batches:
    """make_batches' x and y as views of `tokens` (one copy of the stream, not three)."""
    stride = batch_size * seq_len
    n = max(0, (len(tokens) - 1) // stride)
    body = tokens[: n * stride + 1]
    return Batches(body[:-1].view(n, batch_size, seq_len), body[1:].view(n, batch_size, seq_len))


def sample_counts(settings: DataSettings) -> dict[str, Optional[int]]:
    """Samples per split, None for the whole split: train_samples (0 = whole); eval_samples for
    validation and test (0 = whole; -1 = int(train_samples × eval_fraction), or whole too)."""
    train = settings.train_samples or None
    if settings.eval_samples == -1:
        evaluation = None if train is None else int(train * settings.eval_fraction)
    else:
        evaluation = settings.eval_samples or None
    return {"train": train, "validation": evaluation, "test": evaluation}


def cut_lengths(settings: DataSettings) -> dict[str, Optional[int]]:
    """Tokens kept of each split's stream: samples × (seq_len + 1); None keeps all."""
    return {split: None if n is None else n * (settings.seq_len + 1)
            for split, n in sample_counts(settings).items()}


def split_files(settings: DataSettings) -> dict[str, str]:
    """The file inside data.path that holds each split."""
    return {"train": settings.train_file, "validation": settings.validation_file,
            "test": settings.test_file}


# -- reading rows: local files, the embedded copy, the hub -------------------------------

def resolve_local_path(settings: DataSettings) -> Optional[Path]:
    path = settings.path or os.environ.get("ASHEM_DATA", "")
    return Path(path).expanduser() if path else None


def rows_of(raw: bytes, name: str) -> list[str]:
    """A file's lines (tokens do not depend on where rows break, so any line split will do)."""
    try:
        return raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{name!r} is not UTF-8 text (bad byte near offset {e.start})"
                        ) from None


def read_local_rows(directory: Path,
                    names: dict[str, str] = SPLIT_FILES) -> dict[str, list[str]]:
    """Each split's rows from its file in `directory` (names: split -> file name)."""
    need = f"it must hold {', '.join(names.values())}"
    if not directory.is_dir():
        raise DataError(f"data.path {str(directory)!r} is not a directory; {need}")
    rows = {}
    for split, name in names.items():
        path = directory / name
        if not path.is_file():
            raise DataError(f"data.path {str(directory)!r} has no {name} (the {split} split, "
                            f"data.{split}_file); {need}")
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise DataError(f"cannot read {str(path)!r}: {e.strerror}") from None
        if not raw:
            raise DataError(f"{str(path)!r} (the {split} split) is empty")
        rows[split] = rows_of(raw, str(path))
    return rows


def read_embedded_rows() -> dict[str, list[str]]:
    """WikiText-2 raw from the package's own xz copy, each file's sha256 checked."""
    folder = resources.files(__package__) / "corpus"
    rows = {}
    for split, name in SPLIT_FILES.items():
        try:
            raw = lzma.decompress((folder / f"{name}.xz").read_bytes())
        except (OSError, lzma.LZMAError) as e:
            raise DataError(f"the copy of {name} shipped with ashem cannot be read ({e}); "
                            f"reinstall ashem, or set data.path") from None
        if hashlib.sha256(raw).hexdigest() != EMBEDDED_SHA256[split]:
            raise DataError(f"the copy of {name} shipped with ashem is damaged (its sha256 "
                            "differs); reinstall ashem, or set data.path")
        rows[split] = rows_of(raw, name)
    return rows


def hub_reachable(timeout: float = 3.0) -> bool:
    if any(os.environ.get(switch, "") in ("1", "true", "TRUE", "yes")
           for switch in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return False
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def read_hub_rows(settings: DataSettings,
                  reachable: Callable[[], bool] = hub_reachable) -> dict[str, list[str]]:
    hint = ("set data.path in settings.toml (or the ASHEM_DATA environment variable) to a "
            f"directory holding {', '.join(split_files(settings).values())}")
    if not reachable():
        raise DataError(f"the Hugging Face hub is not reachable (offline?); {hint}")
    import datasets

    datasets.utils.logging.set_verbosity_error()
    datasets.utils.logging.disable_progress_bar()
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="datasets")
    try:
        ds = datasets.load_dataset(settings.hub_name, settings.hub_config)
    except Exception as e:  # datasets and the hub raise many types
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"cannot load {settings.hub_name}/{settings.hub_config} from the hub "
                        f"({first}); {hint}") from None
    return hub_text_rows(ds, settings)


def hub_text_rows(ds, settings: DataSettings) -> dict[str, list[str]]:
    """The text column (data.hub_text_column) of each split of the hub dataset."""
    name, column = f"{settings.hub_name}/{settings.hub_config}", settings.hub_text_column
    missing = [split for split in SPLITS if split not in ds]
    if missing:
        raise DataError(f"{name} on the hub has no {missing[0]} split; it has "
                        f"{', '.join(ds.keys())} (ashem needs {', '.join(SPLITS)})")
    for split in SPLITS:
        if column not in ds[split].column_names:
            raise DataError(f"data.hub_text_column = {column!r}: {name} has no such column in "
                            f"its {split} split; its columns: "
                            f"{', '.join(ds[split].column_names)}")
    return {split: list(ds[split][column]) for split in SPLITS}


def data_source(settings: DataSettings, reachable: Callable[[], bool] = hub_reachable
                ) -> tuple[str, Callable[[], dict[str, list[str]]]]:
    """Where the rows come from, in words, and how to read them: data.path, else
    $ASHEM_DATA, else the embedded copy (for its hub configuration), else the hub."""
    local = resolve_local_path(settings)
    if local is not None:
        return str(local), lambda: read_local_rows(local, split_files(settings))
    if (settings.hub_name, settings.hub_config) == EMBEDDED:
        return f"embedded:{'/'.join(EMBEDDED)}", read_embedded_rows
    return (f"hub:{settings.hub_name}/{settings.hub_config}",
            lambda: read_hub_rows(settings, reachable))


def describe_source(settings: DataSettings) -> str:
    return data_source(settings)[0]


def load_corpus(settings: DataSettings, reachable: Callable[[], bool] = hub_reachable,
                builds: bool = True, wait: Callable[[], None] = lambda: None) -> Corpus:
    """The corpus through its token cache. `builds`: this process writes the cache when it
    is missing (under torchrun, one process per node); `wait()`: until it has."""
    from .tokens import cached_corpus

    source, read_rows = data_source(settings, reachable)
    return cached_corpus(settings, source, read_rows, builds, wait)


def corpus_from_rows(rows: dict[str, list[str]], settings: DataSettings,
                     source: str) -> Corpus:
    tokens = {split: tokenize(rows[split]) for split in SPLITS}
    for split in ("train", "validation"):
        if not tokens[split]:
            raise DataError(f"the {split} split of {source} holds no words")
    vocab = build_vocabulary(tokens["train"], tokens["validation"], size=settings.vocab_size)
    lengths = cut_lengths(settings)
    batches = {}
    for split in SPLITS:
        tokens[split] = tokens[split][: lengths[split]]
        stream = vocab.encode(tokens[split])
        batches[split] = make_batches(stream, settings.batch_size, settings.seq_len)
    return checked_corpus(vocab, batches, settings, source, {s: len(tokens[s]) for s in SPLITS})


def checked_corpus(vocab: Vocabulary, batches: dict[str, Batches], settings: DataSettings,
                   source: str, kept: dict[str, int]) -> Corpus:
    """The corpus, or DataError when its train or validation split has no full batch
    (`kept`: the tokens kept of each split)."""
    for split in ("train", "validation"):
        if len(batches[split]) == 0:
            raise DataError(
                f"the {split} split of {source} is too small for one batch: "
                f"{kept[split]} tokens, one batch of "
                f"data.batch_size={settings.batch_size} × data.seq_len={settings.seq_len} "
                f"needs {settings.batch_size * settings.seq_len + 1}")
    return Corpus(vocab, batches, source)
