"""Writes tiny_mc.jsonl: multiple-choice items made from the embedded corpus (the King James
Bible that capgap's offline default trains on). Each item is the start of a verse; the
choices are its true ending and the endings of three other verses. A check that the harness
pipeline runs and moves with the model, not a benchmark to report.

    python tests/data/harness/make_tiny_mc.py   # deterministic: rewrites the same file
"""

import json
import random
from pathlib import Path

from capgap.data.sources import embedded_corpus_file

ITEMS, CHOICES, SEED = 64, 4, 0


def split(text: str) -> tuple[str, str] | None:
    words = text.split()
    if not 10 <= len(words) <= 30:
        return None
    cut = len(words) * 3 // 5
    return " ".join(words[:cut]), " ".join(words[cut:])


def main():
    verses = [json.loads(line)["text"].strip() for line in embedded_corpus_file().open(encoding="utf-8")]
    rng = random.Random(SEED)
    pairs = [p for p in map(split, rng.sample(verses, 20 * ITEMS)) if p]
    items, endings = pairs[:ITEMS], [end for _, end in pairs[ITEMS:]]
    out = Path(__file__).with_name("tiny_mc.jsonl")
    with out.open("w") as f:
        for i, (start, end) in enumerate(items):
            choices = rng.sample(endings, CHOICES - 1)
            gold = rng.randrange(CHOICES)
            choices.insert(gold, end)
            f.write(json.dumps({"id": i, "context": start, "choices": choices, "gold": gold}) + "\n")
    print(f"wrote {out} ({len(items)} items)")


if __name__ == "__main__":
    main()
