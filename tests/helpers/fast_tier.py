"""What the fast tier (`make test`) compiles with.

The fast tier's programs are small (a stand-in model on a batch of 8, one
convolution on a 7x8 image) and run in milliseconds; their cost is compiling.
`fast_jit` compiles with XLA's backend (LLVM) at optimization level 0, which
halves XLA:CPU's compile time and changes no result a test checks (the same HLO
runs; only the machine code is less optimized). Measured on the shared 2-core
CPU, CPU seconds: the GoogLeNet stand-in's gradient 7.3 at the default level,
3.8 at level 0; all 15 model stand-ins 94 and 63; five conv cases x three
algorithms, forward and gradient, 6.9 and 3.7.
"""

from __future__ import annotations

import jax


def fast_jit(fun, **kwargs):
    """`jax.jit(fun, **kwargs)`, compiled at XLA backend optimization level 0."""
    return jax.jit(fun, compiler_options={"xla_backend_optimization_level": 0}, **kwargs)
