"""Train one model: `python scripts/train.py --config FILE[:variant] --workdir DIR`.

A thin wrapper of `python -m research.train` (research/train/__main__.py has the usage
and the exit codes; research/commands.py the command).
"""

from research.commands import train

if __name__ == "__main__":
    train()
