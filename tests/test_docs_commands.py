"""Every command in the shell blocks of README.md and CONTRIBUTING.md runs when pasted: its program (a
console command or a ``python -m`` module) answers ``--help`` (with its subcommand, where it has one),
every flag the command uses is one its help lists, and no line holds a placeholder such as ``...``.
Commands that install, lint or run the test suite are the test command's own (CI runs them)."""
from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "CONTRIBUTING.md")
CONSOLE = {"mosaic-train": "mosaic_model.cli.train", "mosaic-eval": "mosaic_model.cli.eval", "mosaic-hf": "mosaic_model.cli.hf",
           "mosaic-lm-eval": "mosaic_model.cli.harness"}
SKIP = {"pip", "ruff", "git", "cd", "tar", "export"}  # installs, lint, and shell built-ins: not ours to dry-run


def shell_blocks(text: str) -> list[str]:
    """The lines of the fenced blocks that hold shell (no language, ``bash`` or ``sh``), continuation
    lines joined, comments dropped."""
    lines, inside, lang = [], False, ""
    for raw in text.splitlines():
        if raw.startswith("```"):
            inside, lang = (not inside), raw[3:].strip()
            continue
        if inside and lang in ("", "bash", "sh", "shell"):
            lines.append(raw)
    joined = "\n".join(lines).replace("\\\n", " ")
    return [l.split(" #")[0].strip() for l in joined.splitlines() if l.strip() and not l.strip().startswith("#")]


def commands(line: str) -> list[list[str]]:
    """The commands of a line (split on ``&&`` and ``;``), each without leading VAR=value settings."""
    out = []
    for part in re.split(r"&&|;", line):
        words = shlex.split(part)
        while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
            words = words[1:]
        if words:
            out.append(words)
    return out


def program(words: list[str]) -> tuple[str, list[str]] | None:
    """(module to run with ``python -m``, the remaining words) of a command, or None if not ours."""
    if words[0] in CONSOLE:
        return CONSOLE[words[0]], words[1:]
    if words[0] == "torchrun":
        i = words.index("-m")
        return words[i + 1], words[i + 2:]
    if words[0] in ("python", "python3") and len(words) > 2 and words[1] == "-m":
        return words[2], words[3:]
    return None


CASES = [(doc, line) for doc in DOCS for line in shell_blocks((ROOT / doc).read_text(encoding="utf-8"))]


@functools.lru_cache(maxsize=None)
def help_text(module: str, sub: str | None) -> str:
    argv = [sys.executable, "-m", module, *([sub] if sub else []), "--help"]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, f"{' '.join(argv[2:])} --help failed: {proc.stderr[-800:]}"
    return proc.stdout


def test_the_docs_have_commands():
    assert len(CASES) > 10 and any("mosaic-train" in line for _, line in CASES)


@pytest.mark.parametrize("doc, line", CASES, ids=[f"{d}:{l[:60]}" for d, l in CASES])
def test_documented_command_runs_when_pasted(doc, line):
    assert "..." not in line and "<" not in line.replace("<|endoftext|>", ""), f"{doc}: a placeholder in `{line}`"
    for words in commands(line):
        if words[0] in SKIP or (words[0].startswith("python") and words[1:3] == ["-m", "pytest"]):
            continue
        if words[0] == "bash":
            assert (ROOT / words[1]).is_file(), f"{doc}: {words[1]} does not exist"
            assert subprocess.run(["bash", "-n", str(ROOT / words[1])]).returncode == 0
            continue
        found = program(words)
        assert found is not None, f"{doc}: `{' '.join(words)}` runs nothing this test knows"
        module, rest = found
        sub = rest[0] if rest and not rest[0].startswith("-") else None  # a subcommand or a positional choice
        text = help_text(module, sub)
        for flag in (w.split("=")[0] for w in rest if w.startswith("--")):
            assert flag in text, f"{doc}: `{module}{' ' + sub if sub else ''}` has no flag {flag}"
