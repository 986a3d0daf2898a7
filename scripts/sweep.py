"""Run a sweep: `python scripts/sweep.py --config FILE[:variant] --workdir DIR`.

A thin wrapper of `python -m research.sweep` (research/sweep/__main__.py has the usage
and the exit codes; research/commands.py the command).
"""

from research.commands import sweep

if __name__ == "__main__":
    sweep()
