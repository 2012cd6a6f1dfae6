"""What ``mosaic-train`` trains on: the embedded in-context task or a text corpus, behind one interface.

A task gives the trainer its vocabulary and block size, a batch for every draw (a pure function of
the draw index and the seed, so that a resumed run sees the batches the uninterrupted one would),
the validation metrics at each evaluation and the final ones.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..data.regbench import IGNORE, PAD, VOCAB_SIZE, ICLTask, ICLTaskConfig
from ..data.text import TokenCorpus, load_corpus
from ..evaluation.metrics import corpus_loss, estimate_loss, evaluate_icl
from ..runtime import to_device
from .config import TrainConfig

LM_VOCAB = 50304  # GPT-2's 50257 tokens padded to a multiple of 64, as the official models do


class ICLTrainingTask:
    """RegBench-style in-context language learning (``mosaic_model.data.regbench``)."""

    kind = "icl"
    vocab_size = VOCAB_SIZE

    def __init__(self, config: TrainConfig, progress: bool = True, world: int = 1):
        self.config = a = config
        self.progress = progress
        self.task = ICLTask(ICLTaskConfig(num_train=a.num_train, num_test=a.num_test,
                                          max_string_len=a.max_string_len, seed=a.task_seed,
                                          iid=a.iid))
        t = self.task
        self.block_size = max(t.train.max_len, t.val.max_len, t.test.max_len)

    def describe(self) -> str:
        """One line: the splits' sizes and the block size."""
        t = self.task
        held_out = "new sequences of the training languages" if t.cfg.iid else "languages"
        return (f"task: {len(t.train)} train languages / {len(t.test)} test / {len(t.val)} val {held_out}, "
                f"block {self.block_size}")

    def batch(self, draw: int, batch_size: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``draw`` of shuffled epochs over the training languages (inputs, labels), padded to
        its longest sequence."""
        n = len(self.task.train)
        per_epoch = -(-n // batch_size)
        epoch, i = divmod(draw, per_epoch)  # shuffled epochs; the last batch of one may be short
        perm = np.random.default_rng([self.config.seed, epoch]).permutation(n)
        x, y, _ = self.task.train.batch(perm[i * batch_size:(i + 1) * batch_size].tolist(), device)
        return x, y

    def fixed_shape(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch padded to the block size, for CUDA graphs (which replay fixed shapes): the extra
        positions are PAD inputs with ignored labels, and the models being causal, they change nothing
        before them."""
        extra = self.block_size - x.shape[1]
        return (torch.nn.functional.pad(x, (0, extra), value=PAD),
                torch.nn.functional.pad(y, (0, extra), value=IGNORE))

    def validate(self, model: torch.nn.Module, device: torch.device | str, dtype: torch.dtype) -> dict:
        """Loss and in-context metrics on the validation languages."""
        return evaluate_icl(model, self.task.val, self.config.eval_batch_size, device, dtype, progress=self.progress)

    def final(self, model: torch.nn.Module, device: torch.device | str, dtype: torch.dtype) -> dict:
        """Loss and in-context metrics on the test languages."""
        return evaluate_icl(model, self.task.test, self.config.eval_batch_size, device, dtype, progress=self.progress)

    @staticmethod
    def summary(m: dict) -> str:
        """One line of metrics for the log."""
        return (f"loss {m['loss']:.4f} | in-context accuracy {m['accuracy']:.3f} (uniform-guess chance "
                f"{m['chance_accuracy']:.3f}) | L1 {m['l1']:.3f} | TVD {m['tvd']:.3f}")

    final_summary = summary

    @property
    def final_title(self) -> str:
        """What the final metrics are measured on."""
        return "final test (" + ("new sequences of the training languages" if self.task.cfg.iid
                                 else "held-out languages") + ")"


class LMTrainingTask:
    """Language modelling on a text corpus (``mosaic_model.data.text``): uniformly random windows."""

    kind = "lm"
    vocab_size = LM_VOCAB

    def __init__(self, config: TrainConfig, progress: bool = True, world: int = 1):
        self.config = a = config
        self.progress, self.world = progress, world
        self.block_size = a.block_size
        opts = dict(doc_split=a.doc_split, cache_dir=a.cache_dir, tokenizer_dir=a.tokenizer_dir, progress=progress)
        corpus = load_corpus(a.data, **opts)
        if a.val_data:
            self.train_corpus, self.val_corpus = corpus, load_corpus(a.val_data, **opts)
        else:
            self.train_corpus, self.val_corpus = corpus.split(a.val_fraction, seed=a.split_seed)
        self.train_corpus.name, self.val_corpus.name = f"{a.data} (train)", f"{a.val_data or a.data} (val)"
        for c in (self.train_corpus, self.val_corpus):
            c.check_window(self.block_size)

    def describe(self) -> str:
        """One line: tokens and documents of both splits, and the block size."""
        tr, va = self.train_corpus, self.val_corpus
        return (f"data: {len(tr):,} train tokens ({tr.num_documents:,} documents) / {len(va):,} val tokens "
                f"({va.num_documents:,}), block {self.block_size}")

    def batch(self, draw: int, batch_size: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``draw``: random training windows of the block size (inputs, next-token labels)."""
        x, y = self.train_corpus.random_windows(np.random.default_rng([self.config.seed, draw]), batch_size, self.block_size)
        return to_device(x, device), to_device(y, device)  # no host wait on the GPU's queued work

    @staticmethod
    def fixed_shape(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch as it is: windows of the block size already have one shape."""
        return x, y

    # The most batches an evaluation of one split draws when eval_batches is left to the run (the official
    # estimate_loss's count at the paper's recipe is 10; this package's default was 20).
    MAX_EVAL_BATCHES = 20

    @property
    def eval_batches(self) -> int:
        """Batches of random windows per split and evaluation: ``eval_batches`` when given, otherwise as
        many as cover the tokens trained between two evaluations (at least one, at most
        ``MAX_EVAL_BATCHES``), so that a short run does not spend most of its time evaluating."""
        c = self.config
        if c.eval_batches is not None:
            return c.eval_batches
        trained = min(c.eval_every, c.steps) * c.batch_size * c.grad_accum * self.world
        return max(1, min(self.MAX_EVAL_BATCHES, math.ceil(trained / c.eval_batch_size)))

    def _estimate(self, model, corpus: TokenCorpus, device, dtype) -> float:
        return estimate_loss(model, corpus, self.block_size, self.eval_batches, self.config.eval_batch_size,
                             device, dtype, seed=self.config.seed + 1, progress=self.progress)

    def validate(self, model: torch.nn.Module, device: torch.device | str, dtype: torch.dtype) -> dict:
        """Train and validation loss on the same fixed random windows at every evaluation (the
        official ``estimate_loss``, with windows that do not change between evaluations)."""
        return {"loss": self._estimate(model, self.val_corpus, device, dtype),
                "train_loss": self._estimate(model, self.train_corpus, device, dtype)}

    def final(self, model: torch.nn.Module, device: torch.device | str, dtype: torch.dtype) -> dict:
        """What the periodic evaluations sample, on the whole validation split: its consecutive windows of
        the block size, every token predicted once (``corpus_loss``). The last periodic evaluation
        (at the same step) is the line before it in metrics.jsonl."""
        m = corpus_loss(model, self.val_corpus, self.block_size, self.config.eval_batch_size, device, dtype,
                        progress=self.progress)
        return {"loss": m["loss"], "tokens": m["tokens"]}

    @staticmethod
    def summary(m: dict) -> str:
        """One line of metrics for the log."""
        return f"val loss {m['loss']:.4f} (perplexity {np.exp(m['loss']):.2f}) | train loss {m['train_loss']:.4f}"

    @staticmethod
    def final_summary(m: dict) -> str:
        """One line of the final metrics."""
        return (f"val loss {m['loss']:.4f} (perplexity {np.exp(m['loss']):.2f}) over the whole validation split "
                f"({m['tokens']:,} tokens, consecutive windows)")

    final_title = "final"


def make_task(config: TrainConfig, progress: bool = True, world: int = 1) -> ICLTrainingTask | LMTrainingTask:
    """The training task that ``config.task`` names (``progress``: bars for tokenising and long evaluations;
    ``world``: the processes training, which share the tokens of a step)."""
    return (LMTrainingTask if config.task == "lm" else ICLTrainingTask)(config, progress, world)
