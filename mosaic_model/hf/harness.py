"""lm-evaluation-harness on the package's models (``pip install -e ".[harness]"``).

The harness's ``hf`` model type loads an exported folder (``mosaic-hf export``) through
``AutoModelForCausalLM`` once this package's classes are registered, which importing ``mosaic_model.hf``
does: ``mosaic-lm-eval`` is the harness's own command line with that import done first, so every
harness flag and task works (``mosaic-lm-eval run --model hf --model_args pretrained=DIR --tasks
hellaswag``, online). For offline checks, :func:`write_choice_task` builds a small multiple-choice task
from local text (a JSONL file and the task's YAML), which :func:`evaluate` runs.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TASK_YAML = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def write_choice_task(folder: str | Path, documents: list[str], name: str = "mosaic_continuation_choice",
                      seed: int = 0) -> str:
    """A multiple-choice task from ``documents`` (at least two of four words or more): each item is the
    first half of a document's words, to be continued either by the rest of that document (the answer)
    or by the second half of another document, in a seeded random order. Writes ``NAME.jsonl`` and
    ``NAME.yaml`` into ``folder`` (the harness's ``include_path``); returns the task's name."""
    docs = [d.split() for d in documents if len(d.split()) >= 4]
    if len(docs) < 2:
        raise ValueError(f"documents: need two of four words or more, got {len(docs)}")
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i, words in enumerate(docs):
        other = docs[(i + 1 + int(rng.integers(len(docs) - 1))) % len(docs)]
        # The harness puts its target delimiter, a space, between the context and a choice.
        true_end, false_end = " ".join(words[len(words) // 2:]), " ".join(other[len(other) // 2:])
        gold = int(rng.integers(2))
        choices = [true_end, false_end] if gold == 0 else [false_end, true_end]
        items.append({"context": " ".join(words[: len(words) // 2]), "choices": choices, "gold": gold})
    data = folder / f"{name}.jsonl"
    data.write_text("\n".join(json.dumps(item) for item in items) + "\n", encoding="utf-8")
    (folder / f"{name}.yaml").write_text(TASK_YAML.format(name=name, data=data.resolve()), encoding="utf-8")
    return name


def evaluate(hf_folder: str | Path, tasks: list[str], include_path: str | Path | None = None, batch_size: int = 4,
             device: str = "cpu", log_samples: bool = False) -> dict:
    """``lm_eval.simple_evaluate`` with the harness's ``hf`` model on an exported folder (this package's
    classes are registered: importing this module ran ``mosaic_model.hf``); returns the harness's results."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(include_path)) if include_path else TaskManager()
    return lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={hf_folder},backend=causal,dtype=float32",
                                   tasks=tasks, task_manager=manager, device=device, batch_size=batch_size,
                                   log_samples=log_samples)
