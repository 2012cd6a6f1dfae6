"""Evaluation of trained models: metrics (``metrics.py``), attention probes (``probes.py``), the analyses
of ``mosaic-eval`` (``analyses.py``), prompt continuations (``prompts.py``) and figures (``plots.py``).
Imports the models and the data, never training or a command line."""
from .analyses import allow_context, attention_rows, position_losses
from .metrics import (
    corpus_loss,
    estimate_loss,
    evaluate_icl,
    loss_by_position,
    mean_last_row_attention,
    token_losses,
)
from .probes import last_row_attention
from .prompts import continue_prompts, decode_tokens, default_prompts

__all__ = ["allow_context", "attention_rows", "position_losses", "corpus_loss", "estimate_loss", "evaluate_icl",
           "loss_by_position", "mean_last_row_attention", "token_losses", "last_row_attention", "continue_prompts",
           "decode_tokens", "default_prompts"]
