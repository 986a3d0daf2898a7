"""Training-step benchmarks: our step against plain Flax, PyTorch and Keras (`scripts/bench.py`).

peers.py       the benchmarked zoo models as one layer list per model, built by each
               peer framework and checked against the zoo's parameter count
frameworks.py  one runner per framework: build, compile, then `steps` timed steps
profile.py     where a compiled program spends its time (jax.profiler, summed by event)
"""
