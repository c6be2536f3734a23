"""A large synthetic corpus in the layout the engine reads: wiki.train.raw, wiki.valid.raw and
wiki.test.raw in one directory, lowercase words separated by spaces, 100 words a line.

    python bench/make_corpus.py OUT_DIR [--train-tokens 50000000] [--valid-tokens 17000000]
        [--test-tokens 1000000] [--vocab 30000] [--seed 0]
    ashem-engine run --set data.path=OUT_DIR --set data.train_samples=0 ...

Each split holds exactly the number of words asked for (the engine's tokens:
`row.lower().split()`). The words are made up (consonant-vowel syllables, the more frequent
the shorter). Each word is, with probability 1/2, the previous word's fixed successor (a word
of about the same frequency), else a fresh draw from a Zipf distribution (exponent 1) over the
vocabulary; the first word of a line is always a draw. So the unigram frequencies stay Zipfian
(averaged over blocks of 8 neighbouring ranks), and there is a bigram structure to learn: half
the tokens are easy once a word's successor is known, half are as hard as Zipf (with the
default vocabulary, the generator's own PPL is about 75 against about 1,500 for unigram
frequencies). The same seed writes the same bytes.

The default validation split (17 M words) is larger than 2**24, the most values
torch.quantile takes. Sampling is vectorised with numpy and written in chunks of about a
million words, so memory stays bounded and the defaults take well under a minute.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

SPLIT_FILES = {"train": "wiki.train.raw", "validation": "wiki.valid.raw",
               "test": "wiki.test.raw"}
WORDS_PER_LINE = 100
LINES_PER_CHUNK = 10_000  # a million words: a few tens of MB of working arrays
ZIPF_EXPONENT = 1.0
SUCCESSOR_PROBABILITY = 0.5
BLOCK = 8  # a word's successor is in its block of BLOCK neighbouring ranks; a power of two
CONSONANTS = "bdfghklmnprstvz"
VOWELS = "aeiou"
SYLLABLES = [c + v for c in CONSONANTS for v in VOWELS]
MAX_SYLLABLES = 3
MAX_VOCAB = sum(len(SYLLABLES) ** k for k in range(1, MAX_SYLLABLES + 1))


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block, exit 2
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="make_corpus.py", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", metavar="OUT_DIR", help="directory for the three files "
                        "(made if missing; files of the same names are replaced)")
    parser.add_argument("--train-tokens", type=int, default=50_000_000, metavar="N")
    parser.add_argument("--valid-tokens", type=int, default=17_000_000, metavar="N")
    parser.add_argument("--test-tokens", type=int, default=1_000_000, metavar="N")
    parser.add_argument("--vocab", type=int, default=30_000, metavar="N",
                        help=f"distinct words, at most {MAX_VOCAB:,}")
    parser.add_argument("--seed", type=int, default=0, metavar="S")
    return parser


def check_arguments(args: argparse.Namespace) -> str | None:
    """The first thing wrong with the arguments, as one line, or None."""
    for name in ("train_tokens", "valid_tokens", "test_tokens"):
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be at least 1, not {getattr(args, name)}"
    if not 1 <= args.vocab <= MAX_VOCAB:
        return f"--vocab must be between 1 and {MAX_VOCAB:,}, not {args.vocab}"
    if args.seed < 0:
        return f"--seed must be 0 or more, not {args.seed}"
    if Path(args.out_dir).exists() and not Path(args.out_dir).is_dir():
        return f"OUT_DIR {args.out_dir!r} exists and is not a directory"
    return None


# -- the vocabulary ----------------------------------------------------------------------------

def made_up_words(count: int) -> list[str]:
    """`count` distinct words, shortest first: every 1-syllable word, then 2-syllable, ..."""
    words: list[str] = []
    for length in range(1, MAX_SYLLABLES + 1):
        for index in range(len(SYLLABLES) ** length):
            if len(words) == count:
                return words
            digits = []
            for _ in range(length):
                index, digit = divmod(index, len(SYLLABLES))
                digits.append(SYLLABLES[digit])
            words.append("".join(reversed(digits)))
    return words


class WordBytes:
    """The vocabulary as one byte buffer, each word followed by a space, so a chunk of word ids
    becomes text with one numpy gather."""

    def __init__(self, words: list[str]):
        encoded = [w.encode("ascii") + b" " for w in words]
        self.lengths = np.array([len(e) for e in encoded], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
        self.buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def text(self, ids: np.ndarray, line_ends: np.ndarray) -> bytes:
        """The words `ids` as text; the separator after each word at `line_ends` (indices
        into ids) becomes a newline."""
        lengths = self.lengths[ids]
        ends = np.cumsum(lengths)
        # byte k of the output is byte (k - where its word starts in the output) of its word
        offsets = np.repeat(self.starts[ids] - (ends - lengths), lengths)
        out = self.buffer[offsets + np.arange(ends[-1])]
        out[ends[line_ends] - 1] = ord("\n")
        return out.tobytes()


# -- the word stream ---------------------------------------------------------------------------

def zipf_cdf(vocab: int) -> np.ndarray:
    weights = 1.0 / np.arange(1, vocab + 1) ** ZIPF_EXPONENT
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


def successor_table(vocab: int, rng: np.random.Generator) -> np.ndarray:
    """Each word's successor (word ids are frequency ranks): each block of BLOCK neighbouring
    ranks rotated by its own non-zero amount, a permutation that keeps the frequencies about
    equal. Words of a last, partial block are their own successors."""
    words = np.arange(vocab)
    full = vocab - vocab % BLOCK
    shifts = np.repeat(rng.integers(1, BLOCK, full // BLOCK), BLOCK)
    successor = words.copy()
    successor[:full] = (words[:full] & ~(BLOCK - 1)) | ((words[:full] + shifts) & (BLOCK - 1))
    return successor


def sample_lines(rng: np.random.Generator, lines: int, cdf: np.ndarray,
                 successor: np.ndarray) -> np.ndarray:
    """(lines, WORDS_PER_LINE) word ids. Vectorised over lines; a loop over the columns, since
    a word may be its predecessor's successor."""
    shape = (lines, WORDS_PER_LINE)
    ids = np.minimum(np.searchsorted(cdf, rng.random(shape), side="right"), len(cdf) - 1)
    follows = rng.random(shape) < SUCCESSOR_PROBABILITY
    for column in range(1, WORDS_PER_LINE):
        ids[:, column] = np.where(follows[:, column], successor[ids[:, column - 1]],
                                  ids[:, column])
    return ids


def write_split(path: Path, tokens: int, rng: np.random.Generator, cdf: np.ndarray,
                successor: np.ndarray, words: WordBytes) -> None:
    """Exactly `tokens` words, 100 a line (the last line may be shorter), through a
    temporary file so that a stopped run leaves no half-written split under the real name."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as out:
            left = tokens
            while left:
                lines = min(LINES_PER_CHUNK, -(-left // WORDS_PER_LINE))
                ids = sample_lines(rng, lines, cdf, successor).reshape(-1)[:left]
                ends = np.arange(WORDS_PER_LINE - 1, len(ids), WORDS_PER_LINE)
                if len(ids) % WORDS_PER_LINE:
                    ends = np.append(ends, len(ids) - 1)
                out.write(words.text(ids, ends))
                left -= len(ids)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def make_corpus(out_dir: Path, tokens: dict[str, int], vocab: int, seed: int) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    table_seed, *split_seeds = np.random.SeedSequence(seed).spawn(1 + len(SPLIT_FILES))
    successor = successor_table(vocab, np.random.default_rng(table_seed))
    cdf, words = zipf_cdf(vocab), WordBytes(made_up_words(vocab))
    for (split, name), split_seed in zip(SPLIT_FILES.items(), split_seeds):
        write_split(out_dir / name, tokens[split], np.random.default_rng(split_seed), cdf,
                    successor, words)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = check_arguments(args)
    if problem:
        parser.error(problem)
    tokens = {"train": args.train_tokens, "validation": args.valid_tokens,
              "test": args.test_tokens}
    started = time.perf_counter()
    try:
        make_corpus(Path(args.out_dir), tokens, args.vocab, args.seed)
    except OSError as e:
        print(f"{parser.prog}: error: cannot write to {args.out_dir!r}: {e.strerror}",
              file=sys.stderr)
        return 1
    written = ", ".join(f"{n:,} {split}" for split, n in tokens.items())
    print(f"wrote {written} tokens (vocabulary {args.vocab:,}, seed {args.seed}) to "
          f"{args.out_dir} in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
