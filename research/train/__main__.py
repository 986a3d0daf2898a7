"""Train one model on one dataset.

    python -m research.train --config experiments/digits.py --workdir DIR


Override any config field on the command line, e.g. `--config.optim.learning_rate=0.05`.
Running the same command again resumes from the newest checkpoint in DIR.

Exit codes: 0 done; 2 bad input (a message names the field or path), or the
workdir is in use by another run (the message names its process); 3 the loss
became NaN/Inf (results.json says at which step); 74 the operating system
refused a write (disk full, read-only folder: the message names the path; the
last good checkpoint is kept, so the same command resumes once there is room);
130/143 stopped by SIGINT/SIGTERM after writing a checkpoint.
"""

from research.commands import train

if __name__ == "__main__":
    train()
