"""Experiments that reproduce the paper's figures at the scale this package can run (REPRODUCTION.md)."""
