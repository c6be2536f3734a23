"""A small synthetic corpus with learnable structure, for fast tests."""
from __future__ import annotations

import random
from pathlib import Path

SUBJECTS = ["the cat", "a dog", "the old man", "my sister", "the river", "a storm",
            "the king", "our teacher", "the engine", "a bird"]
VERBS = ["sees", "likes", "finds", "follows", "breaks", "paints", "hears", "builds"]
OBJECTS = ["the house", "a song", "the bridge", "an apple", "the road", "a letter",
           "the garden", "a ship", "the tower", "a map"]
TAILS = ["today .", "at night .", "in the rain .", "with great care .", "again .", "."]


def synthetic_rows(lines: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    rows = []
    for i in range(lines):
        if i % 7 == 0:
            rows.append(" ")
            continue
        words = [rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS),
                 rng.choice(TAILS)]
        if rng.random() < 0.3:
            words.append(f"w{rng.randrange(300)}")  # rare noise words
        rows.append(" " + " ".join(words) + " ")
    return rows


def synthetic_splits(seed: int = 0, train_lines: int = 600, eval_lines: int = 120
                     ) -> dict[str, list[str]]:
    return {"train": synthetic_rows(train_lines, seed),
            "validation": synthetic_rows(eval_lines, seed + 1),
            "test": synthetic_rows(eval_lines, seed + 2)}


def write_corpus(directory: Path, splits: dict[str, list[str]]) -> Path:
    names = {"train": "wiki.train.raw", "validation": "wiki.valid.raw", "test": "wiki.test.raw"}
    directory.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        (directory / names[split]).write_text("".join(r + "\n" for r in rows), encoding="utf-8")
    return directory
