"""How often a continuation repeats the word just before it ("to to", "little little"), per model.

  python -m experiments.repeat_rate docs/figures/lm_depth/prompts.md docs/figures/lm_stories/prompts.md

Reads the continuations that ``mosaic-eval generate`` writes (a ``## model`` section per model, the
generated text of each prompt in bold) and prints, per file and model, the share of adjacent word
pairs of the generated text whose two words are equal (case-folded; words are runs of letters and
apostrophes, so punctuation between them does not break a repeat).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

WORD = re.compile(r"[a-z'’]+")


def repeat_rate(texts: list[str]) -> tuple[int, int]:
    """(repeated adjacent pairs, adjacent pairs) over the words of each text."""
    repeats = pairs = 0
    for text in texts:
        words = WORD.findall(text.lower())
        pairs += max(len(words) - 1, 0)
        repeats += sum(a == b for a, b in zip(words, words[1:]))
    return repeats, pairs


def continuations(markdown: str) -> dict[str, list[str]]:
    """{model section title: [the bold (generated) part of each prompt]} of a prompts.md file."""
    return {section.split("\n", 1)[0]: re.findall(r"\*\*(.*?)\*\*", section, flags=re.S)
            for section in re.split(r"\n## ", markdown)[1:]}


def main(argv: list[str] | None = None) -> int:
    """Print the repeat rate of every model section of every file."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path, help="prompts.md files written by mosaic-eval generate")
    a = p.parse_args(argv)
    for path in a.files:
        if not path.is_file():
            p.error(f"files: {path} is not a file")
        for model, texts in continuations(path.read_text()).items():
            r, n = repeat_rate(texts)
            print(f"{path}  {model}: {r}/{n} adjacent word pairs repeat ({r / max(n, 1):.1%}), {len(texts)} prompts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
