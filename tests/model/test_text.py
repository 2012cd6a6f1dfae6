"""The text pipeline: sources and formats, the token cache, windows, splits, bad input."""
from __future__ import annotations

import gzip
import json
import lzma
import os

import numpy as np
import pytest
import torch

from mosaic_model.data import text
from mosaic_model.data.text import EOT, DataError, Source, TokenCorpus, iter_documents, load_corpus


def byte_encoding():
    """A byte-level tiktoken encoding with GPT-2's end-of-text id: CI has no network for GPT-2's BPE."""
    import tiktoken

    return tiktoken.Encoding(name="bytes", pat_str=r"[\s\S]", mergeable_ranks={bytes([i]): i for i in range(256)},
                             special_tokens={"<|endoftext|>": EOT})


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setattr(text, "gpt2_encoding", lambda tokenizer_dir=None: byte_encoding())
    monkeypatch.setenv("MOSAIC_CACHE_DIR", str(tmp_path / "cache"))


def _load(spec, **kw):
    return load_corpus(str(spec), progress=False, workers=kw.pop("workers", 1), **kw)


def _ids(s):
    return list(s.encode("utf-8")) + [EOT]


STORIES = ["Once upon a time there was a cat.", "Lily saw a big dog.\nIt was happy.", "The end."]


@pytest.mark.parametrize("fmt", ["eot.txt", "blank.txt", "strings.jsonl", "objects.jsonl", "list.json",
                                 "objects.json", "eot.txt.gz", "strings.jsonl.xz"])
def test_every_format_gives_the_documents_with_eot_after_each(tmp_path, fmt):
    path = tmp_path / f"data.{fmt}"
    body = {"eot.txt": "<|endoftext|>".join(STORIES), "blank.txt": "\n\n".join(STORIES),
            "strings.jsonl": "\n".join(json.dumps(s) for s in STORIES),
            "objects.jsonl": "\n".join(json.dumps({"text": s, "id": i}) for i, s in enumerate(STORIES)),
            "list.json": json.dumps(STORIES), "objects.json": json.dumps([{"text": s} for s in STORIES]),
            "eot.txt.gz": "<|endoftext|>".join(STORIES), "strings.jsonl.xz": "\n".join(json.dumps(s) for s in STORIES)}[fmt]
    opener = {".gz": gzip.open, ".xz": lzma.open}.get(path.suffix, open)
    with opener(path, "wb") as f:
        f.write(body.encode())
    c = _load(path)
    assert c.num_documents == 3
    assert c.tokens.dtype == np.uint16
    assert c.tokens.tolist() == sum((_ids(s) for s in STORIES), [])
    assert c.starts.tolist() == [0, *np.cumsum([len(_ids(s)) for s in STORIES]).tolist()]


def test_folder_is_read_recursively_in_sorted_order_and_doc_split_file(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a.txt").write_text("first\n\nsecond")
    (tmp_path / "b" / "c.json").write_text(json.dumps(["third"]))
    (tmp_path / "notes.md").write_text("ignored")
    assert list(iter_documents(str(tmp_path))) == ["first", "second", "third"]
    assert list(iter_documents(str(tmp_path), doc_split="file")) == ["first\n\nsecond", "third"]


def test_several_processes_give_the_same_tokens(tmp_path):
    path = tmp_path / "many.jsonl"
    path.write_text("\n".join(json.dumps(f"story number {i} " * (i % 7 + 1)) for i in range(400)))
    one = _load(path, cache_dir=tmp_path / "c1", workers=1)
    two = _load(path, cache_dir=tmp_path / "c2", workers=2)
    assert np.array_equal(one.tokens, two.tokens) and np.array_equal(one.starts, two.starts)


def test_cache_is_reused_and_keyed_by_content(tmp_path, monkeypatch):
    path = tmp_path / "d.txt"
    path.write_text("alpha\n\nbeta")
    first = _load(path)
    assert isinstance(first.tokens, np.memmap)

    def no_tokenizing(*a, **k):
        raise AssertionError("tokenised again")

    monkeypatch.setattr(text, "_tokenize", no_tokenizing)
    assert np.array_equal(_load(path).tokens, first.tokens)  # read from the cache
    path.write_text("alpha\n\ngamma")  # new content, new key
    with pytest.raises(AssertionError, match="tokenised again"):
        _load(path)


@pytest.mark.parametrize("case,match", [
    ("missing", "no such file or folder"),
    ("empty", "no documents"),
    ("latin1", "not UTF-8"),
    ("unknown", "unknown format"),
    ("badjson", "not JSON"),
    ("notlist", "must hold a list"),
    ("badline", "line 2 is not JSON"),
])
def test_bad_sources_name_the_file_and_leave_no_cache(tmp_path, case, match):
    files = {"missing": ("nope.txt", None), "empty": ("e.txt", b"  \n\n "), "latin1": ("l.txt", "caf\xe9".encode("latin-1")),
             "unknown": ("x.csv", b"a,b"), "badjson": ("j.json", b"[1, 2"), "notlist": ("n.json", b'{"text": "a"}'),
             "badline": ("b.jsonl", b'"ok"\n{oops\n')}
    name, body = files[case]
    path = tmp_path / name
    if body is not None:
        path.write_bytes(body)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=match) as exc:
        _load(path, cache_dir=cache)
    assert name in str(exc.value) or case == "empty"
    assert not cache.exists() or not any(cache.iterdir())


def test_too_short_corpus_for_a_window():
    c = TokenCorpus(np.arange(10, dtype=np.uint16), np.array([0, 10]), "tiny.txt")
    with pytest.raises(DataError, match="tiny.txt: 10 tokens, shorter than one window"):
        c.random_windows(np.random.default_rng(0), 2, 16)


def test_random_windows_are_shifted_pairs_and_a_function_of_the_rng():
    c = TokenCorpus(np.arange(1000, dtype=np.uint16), np.array([0, 1000]))
    x, y = c.random_windows(np.random.default_rng(3), 8, 32)
    assert x.shape == y.shape == (8, 32) and x.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.all(y[:, -1] == x[:, -1] + 1)
    x2, _ = c.random_windows(np.random.default_rng(3), 8, 32)
    assert torch.equal(x, x2)


def test_document_windows_start_each_document_and_mask_past_its_end():
    c = TokenCorpus(np.array([1, 2, 3, EOT, 4, 5, 6, 7, 8, 9, EOT], dtype=np.uint16), np.array([0, 4, 11]))
    x, y = c.document_windows(4)
    assert x[0].tolist() == [1, 2, EOT, EOT] and y[0].tolist() == [2, 3, -100, -100]
    assert x[1].tolist() == [4, 5, 6, 7] and y[1].tolist() == [5, 6, 7, 8]
    # Only the second document has a target at all 4 positions (5 tokens before its EOT).
    x, y = c.document_windows(4, full_length=True)
    assert x.tolist() == [[4, 5, 6, 7]] and y.tolist() == [[5, 6, 7, 8]]
    assert c.document_windows(5, full_length=True)[0].tolist() == [[4, 5, 6, 7, 8]]
    assert len(c.document_windows(6, full_length=True)[0]) == 0
    assert c.document_windows(4, max_docs=1)[0].tolist() == [[1, 2, EOT, EOT]]


def test_split_by_document_is_seeded_and_disjoint():
    docs = [np.full(i + 2, i, dtype=np.uint16) for i in range(20)]
    c = TokenCorpus(np.concatenate(docs), np.concatenate([[0], np.cumsum([len(d) for d in docs])]))
    train, val = c.split(0.25, seed=1)
    assert train.num_documents == 15 and val.num_documents == 5
    assert set(np.unique(train.tokens)).isdisjoint(np.unique(val.tokens))
    again, _ = c.split(0.25, seed=1)
    assert np.array_equal(again.tokens, train.tokens)
    with pytest.raises(DataError, match="val_fraction"):
        c.split(1.0)


def test_hugging_face_dataset_saved_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")  # a dependency of the package; absent from the GPU image

    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"story": STORIES, "n": [1, 2, 3]}),
                          "validation": datasets.Dataset.from_dict({"story": ["held out"], "n": [0]})}
                         ).save_to_disk(str(tmp_path / "ds"))
    c = _load(f"hf:{tmp_path / 'ds'}:train:story")
    assert c.tokens.tolist() == sum((_ids(s) for s in STORIES), [])
    assert _load(f"hf:{tmp_path / 'ds'}:validation:story").tokens.tolist() == _ids("held out")
    with pytest.raises(DataError, match="no column 'text'"):
        _load(f"hf:{tmp_path / 'ds'}")
    with pytest.raises(DataError, match="no split 'test'"):
        _load(f"hf:{tmp_path / 'ds'}:test:story")


def test_babistories_multi_part_7z(tmp_path):
    """The official layout: a 7z archive cut into numbered parts, one JSON-encoded story a line."""
    multivolumefile = pytest.importorskip("multivolumefile")
    py7zr = pytest.importorskip("py7zr")
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    train = [f"Story {i}: " + rng.bytes(60).hex() for i in range(60)]  # incompressible: several parts
    (src / "traindataset.txt").write_text("\n".join(json.dumps(s) for s in train))
    (src / "valdataset.txt").write_text(json.dumps("A val story."))
    parts = tmp_path / "parts"
    parts.mkdir()
    with multivolumefile.MultiVolume(parts / "babistories-dataset.7z", mode="wb", volume=2048, ext_digits=3) as vol:
        with py7zr.SevenZipFile(vol, "w") as archive:
            archive.writeall(src, arcname="data")
    assert len(list(parts.glob("*.7z.0*"))) >= 2  # really several parts
    c = _load(f"babistories:{parts}")
    assert c.num_documents == 60 and c.tokens[: len(_ids(train[0]))].tolist() == _ids(train[0])
    assert _load(f"babistories:{parts}:val").tokens.tolist() == _ids("A val story.")
    with pytest.raises(DataError, match="split must be train or val"):
        Source.parse(f"babistories:{tmp_path / 'missing'}:test")


def test_tokenizer_folder_is_checked(tmp_path, monkeypatch):
    monkeypatch.undo()  # the real gpt2_encoding
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\n")
    (tmp_path / "encoder.json").write_text("{}")
    with pytest.raises(DataError, match="not GPT-2's BPE files"):
        text.gpt2_encoding(tmp_path)
    with pytest.raises(DataError, match="encoder.json is missing"):
        (tmp_path / "encoder.json").unlink() or text.gpt2_encoding(tmp_path)


def test_shipped_gpt2_encoding_is_tiktokens_gpt2(monkeypatch):
    """The BPE files shipped in the package give GPT-2's ids (those tiktoken's "gpt2" gives, for a
    sentence whose ids are known), with no folder named and no network."""
    monkeypatch.undo()
    monkeypatch.delenv("MOSAIC_TOKENIZER_DIR", raising=False)
    assert text.tokenizer_dir_from_env() == text.SHIPPED_TOKENIZER_DIR
    enc = text.gpt2_encoding()
    assert enc.encode_ordinary("Hello world, Lily and Ben went to the park.") == [15496, 995, 11, 20037, 290, 3932,
                                                                                 1816, 284, 262, 3952, 13]
    assert enc.encode_ordinary("<|endoftext|>") != [EOT]  # special tokens are not parsed
    assert enc.n_vocab == 50257 and enc.decode([15496, 995]) == "Hello world"


def test_a_tokenizer_that_fails_in_the_workers_stops_the_pool(monkeypatch):
    """A worker whose tokenizer fails ends the tokenisation with that error, at once (multiprocessing
    starts a new worker for every initializer that raises, so before it was fixed this never ended)."""
    monkeypatch.undo()
    parent = os.getpid()
    real = text.gpt2_encoding

    def fails_in_workers(tokenizer_dir=None):
        if os.getpid() != parent:
            raise DataError("tokenizer folder X: not GPT-2's BPE files (broken in the worker)")
        return real(tokenizer_dir)

    monkeypatch.setattr(text, "gpt2_encoding", fails_in_workers)
    if text.multiprocessing.get_start_method(allow_none=True) not in (None, "fork") or os.name != "posix":
        pytest.skip("the workers must inherit the patched module (fork)")
    with pytest.raises(DataError, match="broken in the worker"):
        text._tokenize([f"document {i}" for i in range(64)], None, workers=2, progress=False, name="x")


NO_NETWORK = """
import socket, sys
def refuse(*args, **kwargs):
    raise OSError("the network is blocked in this test")
socket.socket.connect = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
from mosaic_model.data import text
if len(sys.argv) > 1 and sys.argv[1] == "--corrupt-tokenizer":
    text.SHIPPED_TOKENIZER_DIR = __import__("pathlib").Path(sys.argv[2])
    sys.argv[1:3] = []
from mosaic_model.cli.train import main
sys.exit(main(sys.argv[1:]))
"""


def _train_offline(tmp_path, *extra):
    import subprocess
    import sys

    corpus = tmp_path / "my.txt"
    corpus.write_text("\n\n".join(f"Story {i}: Lily and Ben went to the park and saw {i} ducks." for i in range(60)))
    env = {k: v for k, v in os.environ.items() if k != "MOSAIC_TOKENIZER_DIR"}
    env["MOSAIC_CACHE_DIR"] = str(tmp_path / "cache")
    argv = [sys.executable, "-c", NO_NETWORK, *extra, "--task", "lm", "--data", str(corpus), "--steps", "2", "--warmup", "1",
            "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "2",
            "--eval-batches", "1", "--eval-batch-size", "2", "--eval-every", "2", "--kernels", "reference",
            "--device", "cpu", "--quiet", "--out-dir", str(tmp_path / "run")]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)


def test_text_training_needs_no_network_and_no_tokenizer_flag(tmp_path):
    proc = _train_offline(tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "final: val loss" in proc.stdout


def test_a_corrupt_shipped_tokenizer_is_one_line_and_exit_2(tmp_path):
    import shutil
    import time

    broken = tmp_path / "bpe"
    shutil.copytree(text.SHIPPED_TOKENIZER_DIR, broken)
    with open(broken / "vocab.bpe", "a") as f:
        f.write("x y\n")  # one merge more: the sha256 no longer matches
    t0 = time.time()
    proc = _train_offline(tmp_path, "--corrupt-tokenizer", str(broken))
    assert proc.returncode == 2 and time.time() - t0 < 60
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not GPT-2's BPE files" in lines[0] and str(broken) in lines[0], proc.stderr[-2000:]
