"""Developer tools for the kernels, run from the repository root as ``python -m benchmarks.tools.<name>``:
the tile sweep that fills the ops' tile tables (``tune_kernels``), the compiler report of every launch
(``kernel_report``: registers, spills, shared memory, programs per SM), the host time of an op call
through the custom op and through the direct launches (``dispatch_cost``), and a profile of one
training step by kind of work (``profile_step``). They measure to guide a change; the comparisons with
peers are the ``bench_*`` scripts beside them. docs/ARCHITECTURE.md lists them."""
