"""Developer tools for the kernels: tile sweeps (tune_kernels), the compiler report (kernel_report),
custom-op dispatch cost per call (dispatch_cost) and a profile of one training step by kind of work (profile_step).
They measure to guide changes; the comparisons with peers live in benchmarks/."""
