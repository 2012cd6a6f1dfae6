"""Text corpora for language modelling: sources, GPT-2 tokenisation into a memory-mapped cache, windows.

A *source* is a string:

* a path to a file or a folder of files: ``.txt`` (documents separated by ``<|endoftext|>``, or by
  blank lines when the file holds none), ``.jsonl`` (a ``text`` field, or one JSON string a line),
  ``.json`` (a list of strings, or of objects with a ``text`` field), each optionally ``.gz`` or
  ``.xz`` compressed. A folder is read recursively in sorted order.
* ``hf:NAME[:SPLIT[:COLUMN]]``: a Hugging Face dataset through ``datasets`` (a hub name, or a folder
  written by ``Dataset.save_to_disk``); SPLIT defaults to ``train``, COLUMN to ``text``.
* ``babistories:DIR[:SPLIT]``: the official BabiStories 7z parts (``*.7z.001`` ...) in DIR, extracted
  once into the cache; SPLIT is ``train`` (default) or ``val``.

Tokenisation follows the official preparation: tiktoken's GPT-2 encoding, ``encode_ordinary`` (special
tokens are not parsed), and the end-of-text token 50256 after every document. The token stream is
cached as uint16 (``.npy``, memory-mapped) with the documents' start offsets, under a key computed
from the source's content, the document rule and the tokenizer, so a second run reads the cache.
GPT-2's ``vocab.bpe`` and ``encoder.json`` ship with the package (``data/gpt2_bpe/``), so tokenising
never touches the network; ``--tokenizer-dir`` or ``$MOSAIC_TOKENIZER_DIR`` names another folder
holding them. Either is checked against tiktoken's sha256 of the files.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import multiprocessing
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch

if TYPE_CHECKING:  # imported where it is used, so that the package imports without tiktoken's start-up cost
    import tiktoken

EOT = 50256
GPT2_VOCAB = 50257
EOT_TEXT = "<|endoftext|>"
TEXT_SUFFIXES = (".txt", ".jsonl", ".json")
COMPRESSIONS = {".gz": gzip.open, ".xz": lzma.open}
DOC_SPLITS = ("auto", "eot", "blank", "line", "file")
_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
_FORMAT_VERSION = 1  # bump when the cached layout or the document rules change


class DataError(ValueError):
    """A source that cannot be read as a corpus; the message names the file and what is wrong."""


# --------------------------------------------------------------------------- tokenizer

SHIPPED_TOKENIZER_DIR = Path(__file__).resolve().parent / "gpt2_bpe"  # GPT-2's BPE files, in the package


def tokenizer_dir_from_env(tokenizer_dir: str | os.PathLike | None = None) -> Path:
    """The folder of GPT-2 BPE files to use: the argument, else ``$MOSAIC_TOKENIZER_DIR``, else the
    files shipped with the package."""
    chosen = tokenizer_dir or os.environ.get("MOSAIC_TOKENIZER_DIR") or None
    return Path(chosen) if chosen else SHIPPED_TOKENIZER_DIR


def gpt2_encoding(tokenizer_dir: str | os.PathLike | None = None) -> tiktoken.Encoding:
    """GPT-2's encoding (tiktoken's "gpt2": the same merges, pattern and end-of-text token), built from
    the ``vocab.bpe`` and ``encoder.json`` of :func:`tokenizer_dir_from_env`, without the network.
    DataError naming the folder when a file is missing or is not GPT-2's (sha256)."""
    import tiktoken

    folder = tokenizer_dir_from_env(tokenizer_dir)
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    for name in ("vocab.bpe", "encoder.json"):
        if not (folder / name).is_file():
            raise DataError(f"tokenizer folder {folder}: {name} is missing (need vocab.bpe and encoder.json)")
    try:
        ranks = data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(folder / "vocab.bpe"), encoder_json_file=str(folder / "encoder.json"),
            vocab_bpe_hash=_VOCAB_BPE_SHA256, encoder_json_hash=_ENCODER_JSON_SHA256)
    except (ValueError, OSError, UnicodeDecodeError) as e:  # tiktoken checks both files' sha256
        raise DataError(f"tokenizer folder {folder}: not GPT-2's BPE files ({str(e).splitlines()[0][:160]})") from None
    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={EOT_TEXT: EOT}, explicit_n_vocab=GPT2_VOCAB)


# --------------------------------------------------------------------------- sources

@dataclass(frozen=True)
class Source:
    """A parsed source string (see the module docstring)."""

    kind: str  # "files", "hf" or "babistories"
    location: str
    split: str = "train"
    column: str = "text"

    @staticmethod
    def parse(spec: str) -> "Source":
        """Parse ``spec``; raises DataError on an unknown form."""
        if not isinstance(spec, str) or not spec:
            raise DataError(f"a data source must be a non-empty string, got {spec!r}")
        if spec.startswith("hf:"):
            parts = spec[3:].split(":")
            if not parts[0] or len(parts) > 3:
                raise DataError(f"data source {spec!r}: expected hf:NAME[:SPLIT[:COLUMN]]")
            return Source("hf", parts[0], *(parts[1:] or []))
        if spec.startswith("babistories:"):
            rest = spec[len("babistories:"):]
            location, split = rest, "train"
            if ":" in rest and not Path(rest).exists():
                location, split = rest.rsplit(":", 1)
            if split not in ("train", "val"):
                raise DataError(f"data source {spec!r}: the BabiStories split must be train or val, got {split!r}")
            return Source("babistories", location, split)
        return Source("files", spec)


def _files_of(path: Path) -> list[Path]:
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file():
        if _suffix(path) is None:
            raise DataError(f"{path}: unknown format (expected .txt, .jsonl or .json, optionally .gz or .xz)")
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and _suffix(p) is not None)
    if not files:
        raise DataError(f"{path}: the folder holds no .txt, .jsonl or .json file")
    return files


def _suffix(path: Path) -> str | None:
    """The text format of ``path`` ('.txt', '.jsonl' or '.json') under an optional compression suffix."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes and suffixes[-1] in TEXT_SUFFIXES else None


def _read_text(path: Path) -> str:
    opener = COMPRESSIONS.get(path.suffix.lower(), open)
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, lzma.LZMAError) as e:
        raise DataError(f"{path}: cannot be read ({e})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r})") from None


def _split_text(text: str, rule: str) -> list[str]:
    if rule == "auto":
        rule = "eot" if EOT_TEXT in text else "blank"
    if rule == "eot":
        parts = text.split(EOT_TEXT)
    elif rule == "blank":
        parts = re.split(r"\n[ \t]*\n", text)
    elif rule == "line":
        parts = text.split("\n")
    else:  # "file"
        parts = [text]
    return [p.strip() for p in parts if p.strip()]


def _documents_of_file(path: Path, rule: str) -> list[str]:
    text = _read_text(path)
    fmt = _suffix(path)
    if fmt == ".txt":
        return _split_text(text, rule)
    if fmt == ".jsonl":
        docs = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {n} is not JSON ({e.msg})") from None
            docs.append(_text_of(item, path, f"line {n}"))
        return [d for d in docs if d.strip()]
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(items, list):
        raise DataError(f"{path}: a .json source must hold a list of strings, got {type(items).__name__}")
    return [d for d in (_text_of(item, path, f"item {i}") for i, item in enumerate(items)) if d.strip()]


def _text_of(item, path: Path, where: str) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and isinstance(item.get("text"), str):
        return item["text"]
    raise DataError(f"{path}: {where} is neither a string nor an object with a 'text' string")


def _hf_dataset(src: Source):
    import datasets

    if Path(src.location).exists():
        ds = datasets.load_from_disk(src.location)
        if isinstance(ds, datasets.DatasetDict):
            if src.split not in ds:
                raise DataError(f"{src.location}: no split {src.split!r} (has {', '.join(ds)})")
            ds = ds[src.split]
    else:
        ds = datasets.load_dataset(src.location, split=src.split)
    if src.column not in ds.column_names:
        raise DataError(f"hf:{src.location}: no column {src.column!r} (has {', '.join(ds.column_names)})")
    return ds


def babistories_files(src: Source, cache_dir: Path) -> list[Path]:
    """Extract the BabiStories 7z parts of ``src.location`` once into the cache; returns the split's files."""
    folder = Path(src.location)
    parts = sorted(folder.glob("*.7z.[0-9][0-9][0-9]")) if folder.is_dir() else []
    if not parts:
        raise DataError(f"{folder}: no BabiStories 7z parts (*.7z.001, *.7z.002, ...) found")
    key = hashlib.sha256("".join(f"{p.name}:{p.stat().st_size}" for p in parts).encode()).hexdigest()[:16]
    out = cache_dir / f"babistories-{key}"
    if not (out / ".complete").exists():
        tmp = cache_dir / f"babistories-{key}.tmp-{os.getpid()}"
        tmp.mkdir(parents=True, exist_ok=True)
        try:
            import multivolumefile
            import py7zr
        except ImportError:
            raise DataError("reading BabiStories needs py7zr and multivolumefile: "
                            "pip install 'memory-mosaics[babistories]'") from None
        base = str(parts[0])[: -len(".001")]
        with multivolumefile.open(base, mode="rb") as vol, py7zr.SevenZipFile(vol, "r") as archive:
            archive.extractall(path=tmp)
        (tmp / ".complete").touch()
        if out.exists():  # another process finished first
            import shutil

            shutil.rmtree(tmp)
        else:
            os.replace(tmp, out)
    files = sorted(p for p in out.rglob("*.txt") if src.split in p.name.lower())
    if not files:
        raise DataError(f"{folder}: the archive holds no .txt file whose name contains {src.split!r}")
    return files


def iter_documents(spec: str, doc_split: str = "auto", cache_dir: str | os.PathLike | None = None) -> Iterator[str]:
    """The documents of a source, in a fixed order. ``doc_split`` decides how a .txt file is cut:
    ``auto`` (on ``<|endoftext|>`` if the file has one, else on blank lines), ``eot``, ``blank``,
    ``line`` (one document a line) or ``file`` (the whole file is one document)."""
    if doc_split not in DOC_SPLITS:
        raise DataError(f"doc_split must be one of {DOC_SPLITS}, got {doc_split!r}")
    src = Source.parse(spec)
    if src.kind == "hf":
        for text in _hf_dataset(src)[src.column]:
            if isinstance(text, str) and text.strip():
                yield text
        return
    if src.kind == "babistories":
        for path in babistories_files(src, Path(cache_dir or default_cache_dir())):
            for n, line in enumerate(_read_text(path).splitlines(), 1):
                if line.strip():  # one JSON-encoded story a line (the official prepare.py)
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError:
                        raise DataError(f"{path}: line {n} is not a JSON string") from None
        return
    for path in _files_of(Path(src.location)):
        yield from _documents_of_file(path, doc_split)


def source_key(spec: str, doc_split: str, tokenizer: str = "gpt2") -> str:
    """A key that changes when the source's content, the document rule or the tokenizer does."""
    h = hashlib.sha256(f"v{_FORMAT_VERSION}|{tokenizer}|{doc_split}|".encode())
    src = Source.parse(spec)
    if src.kind == "hf":
        h.update(f"hf|{src.location}|{src.split}|{src.column}|{_hf_dataset(src)._fingerprint}".encode())
    elif src.kind == "babistories":
        folder = Path(src.location)
        h.update(f"babi|{src.split}|".encode())
        for p in sorted(folder.glob("*.7z.[0-9][0-9][0-9]")):
            h.update(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}".encode())
    else:
        root = Path(src.location)
        for path in _files_of(root):
            h.update(str(path.relative_to(root) if root.is_dir() else path.name).encode())
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    h.update(block)
    return h.hexdigest()[:24]


def default_cache_dir() -> Path:
    """``$MOSAIC_CACHE_DIR``, else ``~/.cache/mosaic``."""
    return Path(os.environ.get("MOSAIC_CACHE_DIR") or Path.home() / ".cache" / "mosaic")


# --------------------------------------------------------------------------- tokenisation

_WORKER_ENC = None
_WORKER_ERROR: str | None = None


def _worker_init(tokenizer_dir):
    # An initializer that raises makes multiprocessing start a new worker, forever: keep the error and
    # raise it from the first task instead, which stops the whole pool with it.
    global _WORKER_ENC, _WORKER_ERROR
    try:
        _WORKER_ENC = gpt2_encoding(tokenizer_dir)
    except Exception as e:  # any failure: the parent re-raises it as one line
        _WORKER_ERROR = f"{type(e).__name__}: {e}" if not isinstance(e, DataError) else str(e)


def _encode_docs(docs: list[str]) -> list[np.ndarray]:
    if _WORKER_ERROR is not None:
        raise DataError(_WORKER_ERROR)
    out = []
    for d in docs:
        ids = _WORKER_ENC.encode_ordinary(d)
        ids.append(EOT)
        out.append(np.asarray(ids, dtype=np.uint16))
    return out


@dataclass
class TokenCorpus:
    """A tokenised corpus: ``tokens`` (uint16, documents back to back, each ending with EOT) and
    ``starts`` (int64, the offset of each document, then the total length)."""

    tokens: np.ndarray
    starts: np.ndarray
    name: str = ""

    @property
    def num_documents(self) -> int:
        """Documents in the corpus."""
        return len(self.starts) - 1

    def __len__(self) -> int:
        return int(self.starts[-1])

    def documents(self, indices: list[int] | np.ndarray) -> TokenCorpus:
        """A new corpus of the given documents, in the given order (copied into memory)."""
        idx = np.asarray(indices, dtype=np.int64)
        lengths = self.starts[idx + 1] - self.starts[idx]
        parts = [self.tokens[self.starts[i]:self.starts[i + 1]] for i in idx]
        tokens = np.concatenate(parts) if parts else np.zeros(0, np.uint16)
        return TokenCorpus(np.ascontiguousarray(tokens), np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                           self.name)

    def split(self, val_fraction: float, seed: int = 0) -> tuple["TokenCorpus", "TokenCorpus"]:
        """(train, val) split by document: a seeded random ``val_fraction`` of the documents (at least
        one) go to validation, both keep the corpus order."""
        if not 0 < val_fraction < 1:
            raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
        n = self.num_documents
        if n < 2:
            raise DataError(f"{self.name}: {n} document(s); a split by document needs at least 2")
        n_val = min(n - 1, max(1, round(val_fraction * n)))
        val = np.sort(np.random.default_rng(seed).permutation(n)[:n_val])
        train = np.setdiff1d(np.arange(n), val)
        return self.documents(train), self.documents(val)

    def check_window(self, block_size: int, what: str = "corpus") -> None:
        """Raise DataError when the corpus is shorter than one window of ``block_size`` + 1 tokens."""
        if len(self) < block_size + 2:
            raise DataError(f"{self.name or what}: {len(self)} tokens, shorter than one window of "
                            f"{block_size + 1} (block size {block_size} + the shifted target)")

    def random_windows(self, rng: np.random.Generator, batch_size: int, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) int64 tensors (batch, T) at uniformly random offsets, y shifted by one (the official
        loader: windows cross document boundaries, nothing is masked)."""
        self.check_window(block_size)
        offsets = rng.integers(0, len(self) - block_size - 1, size=batch_size)
        rows = np.stack([self.tokens[o:o + block_size + 1] for o in offsets]).astype(np.int64)
        t = torch.from_numpy(rows)
        return t[:, :-1].contiguous(), t[:, 1:].contiguous()

    def document_windows(self, block_size: int, max_docs: int | None = None,
                         full_length: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Each document's first ``block_size`` tokens as (x, y), x padded with EOT and y with -100 past
        the document's end (its own EOT is not a target): for loss by position within documents.
        ``full_length`` keeps only the documents with a target at every position (at least
        ``block_size + 1`` tokens), so that every position averages the same documents; ``max_docs``
        then counts those."""
        docs = range(self.num_documents)
        if full_length:
            lengths = np.diff(self.starts) - 1  # without the document's own EOT
            docs = np.flatnonzero(lengths >= block_size + 1)
        docs = docs[:max_docs] if max_docs is not None else docs
        n = len(docs)
        x = np.full((n, block_size), EOT, dtype=np.int64)
        y = np.full((n, block_size), -100, dtype=np.int64)
        for i, d in enumerate(docs):
            doc = self.tokens[self.starts[d]:self.starts[d + 1] - 1].astype(np.int64)[: block_size + 1]
            if len(doc) >= 2:
                x[i, : len(doc) - 1] = doc[:-1]
                y[i, : len(doc) - 1] = doc[1:]
        return torch.from_numpy(x), torch.from_numpy(y)


def load_corpus(spec: str, *, doc_split: str = "auto", cache_dir: str | os.PathLike | None = None,
                tokenizer_dir: str | os.PathLike | None = None, workers: int | None = None,
                progress: bool = True) -> TokenCorpus:
    """Tokenise a source (or read it from the cache) into a memory-mapped :class:`TokenCorpus`.

    Raises DataError when the source is missing, empty, not UTF-8 or of an unknown format. The cache
    is written under a temporary name and renamed into place, so a failure leaves nothing behind.
    """
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    key = source_key(spec, doc_split)
    tok_path, start_path = cache / f"{key}.tokens.npy", cache / f"{key}.starts.npy"
    if not (tok_path.exists() and start_path.exists()):
        docs = list(iter_documents(spec, doc_split, cache))
        if not docs:
            raise DataError(f"{spec}: no documents (the source is empty)")
        arrays = _tokenize(docs, tokenizer_dir, workers, progress, spec)
        lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
        starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        cache.mkdir(parents=True, exist_ok=True)
        tmp = f".tmp-{os.getpid()}"
        try:
            np.save(str(start_path) + tmp, starts)
            mm = np.lib.format.open_memmap(str(tok_path) + tmp + ".npy", mode="w+", dtype=np.uint16, shape=(int(starts[-1]),))
            for a, s in zip(arrays, starts[:-1]):
                mm[s:s + len(a)] = a
            mm.flush()
            del mm
            os.replace(str(start_path) + tmp + ".npy", start_path)
            os.replace(str(tok_path) + tmp + ".npy", tok_path)  # the tokens file last: its presence means complete
        finally:
            for leftover in cache.glob(f"{key}.*{tmp}*"):
                leftover.unlink(missing_ok=True)
    return TokenCorpus(np.load(tok_path, mmap_mode="r"), np.load(start_path), name=spec)


def _tokenize(docs: list[str], tokenizer_dir, workers: int | None, progress: bool, name: str) -> list[np.ndarray]:
    from tqdm.auto import tqdm

    tokenizer_dir = tokenizer_dir_from_env(tokenizer_dir)
    gpt2_encoding(tokenizer_dir)  # a missing or corrupt tokenizer fails here, once, before any worker starts
    workers = workers or min(8, os.cpu_count() or 1)
    chunk = max(1, min(2000, len(docs) // (4 * workers)))  # ~4 chunks a worker, for an even load
    batches = [docs[i:i + chunk] for i in range(0, len(docs), chunk)]
    bar = tqdm(total=len(docs), desc=f"tokenising {Path(name).name or name}", unit="doc", disable=not progress)
    out: list[np.ndarray] = []
    if workers == 1 or len(batches) == 1:
        _worker_init(tokenizer_dir)
        for b in batches:
            out.extend(_encode_docs(b))
            bar.update(len(b))
    else:
        ctx = multiprocessing.get_context("spawn" if os.name != "posix" else "fork")
        with ctx.Pool(workers, initializer=_worker_init, initargs=(tokenizer_dir,)) as pool:
            for b, arrays in zip(batches, pool.imap(_encode_docs, batches)):
                out.extend(arrays)
                bar.update(len(b))
    bar.close()
    return out
