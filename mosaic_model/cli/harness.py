"""``mosaic-lm-eval``: lm-evaluation-harness's own command line, with this package's models registered
with transformers first, so that the harness's ``hf`` model type loads a folder of ``mosaic-hf export``:

  mosaic-lm-eval run --model hf --model_args pretrained=hf/mine,backend=causal --tasks hellaswag

Every argument goes to the harness unchanged (``mosaic-lm-eval --help`` is the harness's help). Needs
``pip install -e ".[harness]"``.
"""
from __future__ import annotations

import sys

from .common import fail


def main() -> int:
    """Console entry point: register the models, then run the harness's CLI on ``sys.argv``."""
    try:
        from lm_eval.__main__ import cli_evaluate

        import mosaic_model.hf  # noqa: F401 (registers the Auto classes)
    except ImportError as e:
        fail("mosaic-lm-eval", f"needs transformers and lm-eval: pip install -e \".[harness]\" ({e})")
    sys.argv[0] = "mosaic-lm-eval"
    cli_evaluate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
