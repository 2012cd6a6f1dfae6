"""Recipes as data: one module per preset, its fields as plain assignments (as nanoGPT's ``config/*.py``).

``preset("paper")`` is a :class:`TrainConfig` with the module's fields over the defaults; any field can
be replaced afterwards (``dataclasses.replace(preset("paper"), n_layer=4, steps=4000)``), and
``mosaic-train --preset paper --n-layer 4`` does the same from the command line.
"""
from __future__ import annotations

import importlib
from dataclasses import fields

from ..config import TrainConfig

PRESETS = ("paper", "regbench")


def preset_fields(name: str) -> dict:
    """The fields a preset sets; ValueError for an unknown preset or a name that is no config field."""
    if name not in PRESETS:
        raise ValueError(f"no preset {name!r}; the presets are {', '.join(PRESETS)}")
    module = importlib.import_module(f"{__name__}.{name}")
    values = {k: v for k, v in vars(module).items() if not k.startswith("_") and k != "annotations"}
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"preset {name!r} sets {', '.join(unknown)}, which are not TrainConfig fields")
    return values


def preset(name: str, **overrides: object) -> TrainConfig:
    """The TrainConfig of preset ``name`` with ``overrides`` (field values) over it."""
    return TrainConfig(**{**preset_fields(name), **overrides})
