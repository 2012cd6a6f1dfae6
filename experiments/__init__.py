"""The paper's experiments, outside the installed package: one module per experiment, run from the
repository root as ``python -m experiments.<name>``; experiments/README.md lists them with their GPU
scripts, figures and the sections of REPRODUCTION.md they feed."""
