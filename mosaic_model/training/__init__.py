"""Training: the typed config (``config.py``) and its presets (``presets/``), the loop (``loop.py``), one
optimizer step eager or graphed (``step.py``), the optimizer and schedule (``optim.py``), checkpoints
(``checkpoint.py``), the run's logs (``run_log.py``), what is trained on (``tasks.py``) and several
processes (``distributed.py``). Imports models, data and evaluation, never a command line.

From Python::

    from dataclasses import replace
    from mosaic_model.training import preset, train
    final = train(replace(preset("paper"), n_layer=4, steps=4000, data="books/", out_dir="runs/l4"))
"""
from .checkpoint import CheckpointError, load_model, read_checkpoint
from .config import SECTIONS, TrainConfig
from .loop import train
from .optim import lr_at
from .presets import PRESETS, preset

__all__ = ["TrainConfig", "SECTIONS", "train", "preset", "PRESETS", "lr_at", "load_model", "read_checkpoint",
           "CheckpointError"]
