"""The command lines: ``mosaic-train`` (``train.py``) and ``mosaic-eval`` (``eval.py``). They parse their
arguments, call the library and print; nothing in the library imports them."""
