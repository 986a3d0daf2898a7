"""Benchmarks and the accelerator check (`scripts/bench.py`, `scripts/accelerator_check.py`).

measure.py          the one measurement set-up: the engine's programs, trial keys,
                    hyperparameters, init, chunk inputs, a timed chunk (`Group`)
peers.py            the benchmarked zoo models as one layer list per model, built by each
                    peer framework and checked against the zoo's parameter count
frameworks.py       one runner per framework: build, compile, then `steps` timed steps
profile.py          where a compiled program spends its time (jax.profiler, summed by event)
workers.py          a measurement in a fresh process, its answer read back
train_mode.py       bench modes, each runnable as a worker: framework step times,
sweep_mode.py       trials at once against one after another,
compile_time.py     time to the first training step,
profile_mode.py     profiles per framework
airbench_driver.py  airbench94.py (PyTorch) run as a subprocess, for the speedrun's peer
accel/              the accelerator check's parts (issue 25's figures)
"""
