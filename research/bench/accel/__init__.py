"""The accelerator check's parts (`scripts/accelerator_check.py` parses and dispatches).

common.py       the table's rows, the check's context, configs and training helpers
data.py         shared/data in pieces small enough for a device call, merged back
checks.py       part "tests": conv/pool algorithms, two bit-identical runs, bfloat16
trials.py       parts "trials" (vmapped trials' scaling) and "pool" (max-pool A/B)
training.py     parts "lenet" (seconds to 99%) and "resnet50" (images per second)
worker.py       one training job in a process of its own, with its own XLA flags
determinism.py  part "determinism": the determinism modes side by side, two processes each
speedrun.py     part "speedrun": ours in both modes against airbench94 itself
study.py        part "optimizers": the optimizer study at speedrun scale, if it exists
report.py       the check's run, its table, and the table of issue 25's goals
"""
