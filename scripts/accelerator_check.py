"""What this project promises on an accelerator, measured in one command.

    python scripts/accelerator_check.py --part 1 --out runs/accel/1   # GPU, call 1 (< 8 min)
    python scripts/accelerator_check.py --part 2 --out runs/accel/2   # GPU, call 2 (< 8 min)
    python scripts/accelerator_check.py --part 3 --out runs/accel/3   # the optimizer study
    python scripts/accelerator_check.py --report runs/accel/1 runs/accel/2 runs/accel/3
    python scripts/accelerator_check.py --smoke --out runs/accel      # every part, tiny, CPU

Prints a markdown table and writes it, with every figure, into --out (`table.md`,
`results.json`, and `goals.md`: issue 25's goals, measured, met?; all rewritten
after each part, so a crash keeps what was measured). The header names the device,
JAX's version, the git commit, XLA_FLAGS and the date. The parts live in
`research/bench/accel/` (each module's docstring says what it measures):

  --part 1  tests      conv/pool algorithms = XLA's; two bit-identical runs; bfloat16
            lenet      LeNet-5 to 99% on MNIST, seconds, deterministic (goal < 3 s)
            trials     N vmapped trials over one: LeNet-5 N = 1..64, airbench N = 1..16
            resnet50   ResNet-50 bfloat16 training img/s (goal 6,000 H200 / 5,000 H100)
            pool       the max-pool algorithm A/B (informs DEFAULT_POOL_ALGORITHM)
  --part 2  determinism  off / ops / pinned, two processes each: hashes and seconds
            speedrun   ours in both modes (the determinism part's runs) and airbench94.py
  --part 3  optimizers experiments/optimizers_cifar10.py via scripts/sweep.py, if present
                       (up to 10 minutes by its own goal: a call of its own)

`--parts a,b` runs named parts instead. Past --budget seconds (390; --part 3: 570;
smoke 900) a part measures no further items (its first always runs), so parts 1 and
2 stay under 8 minutes of device time each. --smoke runs every part at tiny sizes on CPU (slow tier,
tests/bench/test_accelerator_check.py); its goals are not judged ("n/a").

--deterministic on (default, as the configs' deterministic=True) sets XLA's
--xla_gpu_deterministic_ops=true in this process (its value replaces any setting
in XLA_FLAGS); off sets it false. The speedrun and determinism parts run their
training in worker processes with their own flags (`research.bench.accel.worker`).
No persistent compilation cache is used (compile times are part of the figures).
TFDS preparation goes to $RESEARCH_CACHE_DIR, by default `.accel-cache/`.

On a GPU machine without network (H100/H200, Python 3.12, JAX with CUDA, flax,
optax and orbax-checkpoint installed), from the repository root:

  here, once:  make accel-wheels   # .whl/: the other packages, Python 3.12 manylinux
               make accel-data     # .gpu-data/1,2,3: shared/data in pieces < 64 MiB
               make accel-peers AIRBENCH_GIT=<a clone of KellerJordan/cifar10-airbench>
  then device calls back to back (the machine keeps ignored files while it is warm):
    1. carry [".whl", ".peers", ".gpu-data/1"], command `nvidia-smi -L`
    2. carry [".gpu-data/2"], command `true`
    3. carry [".gpu-data/3"], timeout_s 480, command `make accel-check PART=1`
    4. timeout_s 480, command `make accel-check PART=2`
    5. (the optimizer study) timeout_s 600, command `make accel-check PART=3`
  (`make accel-check` installs .whl into /tmp/site and writes $OUT/accel/<part>; where
  the machine has no make, `make -n accel-check PART=1` here prints its two commands.)
  Then `--report` on the two folders gives goals.md; it goes into the docs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from research.bench.accel import data, report
from research.bench.accel.common import Context, with_deterministic_flag

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = report.PARTS


def _data_dir(args) -> tuple[str | None, str]:
    """The data folder (merged from pieces where needed), or None and the error line."""
    data_dir = args.data_dir or os.environ.get("RESEARCH_DATA_DIR", "")
    if not data_dir:
        for guess in (os.path.join(ROOT, ".gpu-data"), os.path.join(ROOT, "..", "shared", "data")):
            if os.path.isdir(guess):
                data_dir = guess
                break
    present, missing = data.missing_pieces(data_dir) if data_dir else ([], [])
    if missing:
        return None, (
            f"error: {data_dir} holds data pieces {','.join(present)} but not "
            f"{','.join(missing)}: carry them first (a machine given back loses earlier pieces)"
        )
    if not data_dir or not os.path.isdir(data_dir):
        return None, f"error: --data-dir {data_dir!r} is not a folder (shared/data or .gpu-data)"
    return os.path.abspath(data.data_root(data_dir)), ""


def _report(folders: list[str]) -> int:
    records = []
    for folder in folders:
        path = os.path.join(folder, "results.json")
        try:
            with open(path) as f:
                records.append(json.load(f))
        except (OSError, ValueError) as err:
            print(f"error: --report {path}: {err}", file=sys.stderr)
            return 74
    text = report.goals_table(records)
    with open(os.path.join(folders[-1], "goals.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, CPU")
    parser.add_argument("--out", default="runs/accel", help="folder for table.md, results.json")
    parser.add_argument("--data-dir", default="", help="shared/data-like folder, or its pieces")
    parser.add_argument(
        "--part", choices=sorted(report.PART_GROUPS), help="one device call's parts"
    )
    parser.add_argument("--parts", default="", help=f"comma list of {PARTS} (default: all)")
    parser.add_argument("--seeds", type=int, default=0, help="speedrun seeds (10; smoke 1)")
    parser.add_argument("--airbench", default=os.path.join(ROOT, ".peers", "airbench94.py"))
    parser.add_argument("--resnet-batches", default="256,512")
    parser.add_argument("--budget", type=float, default=0, help="seconds (390; 3: 570; smoke 900)")
    parser.add_argument(
        "--deterministic",
        choices=("on", "off"),
        default="on",
        help="XLA's deterministic GPU ops, as the configs' default deterministic=True (on), "
        "or autotuned kernels as deterministic=False (off); overrides XLA_FLAGS' setting",
    )
    parser.add_argument("--pack-data", metavar="SRC", help="split SRC into --out/1,2,3; exit")
    parser.add_argument("--report", nargs="+", metavar="DIR", help="goals.md of these checks")
    args = parser.parse_args(argv)
    if args.pack_data:
        data.pack_data(args.pack_data, args.out)
        return 0
    if args.report:
        return _report(args.report)
    if args.part and args.parts:
        print("error: --part and --parts: give one of them", file=sys.stderr)
        return 2
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    parts = parts or list(report.PART_GROUPS[args.part] if args.part else PARTS)
    bad = [p for p in parts if p not in PARTS]
    if bad:
        print(f"error: --parts {','.join(bad)}: choose from {','.join(PARTS)}", file=sys.stderr)
        return 2
    data_dir, error = _data_dir(args)
    if data_dir is None:
        print(error, file=sys.stderr)
        return 2
    # Before JAX starts: deterministic GPU ops or not (--deterministic), TFDS files in the repo.
    deterministic = args.deterministic == "on"
    os.environ["XLA_FLAGS"] = with_deterministic_flag(
        os.environ.get("XLA_FLAGS", ""), deterministic
    )
    os.environ.setdefault("RESEARCH_CACHE_DIR", os.path.join(ROOT, ".accel-cache"))
    if args.smoke:  # compile times are not figures here: identical programs compile once
        import tempfile

        import jax

        jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="accel-xla-"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    budget = args.budget or (900 if args.smoke else 570 if args.part == "3" else 390)
    ctx = Context(
        smoke=args.smoke,
        data_dir=data_dir,
        out=os.path.abspath(args.out),
        seeds=args.seeds or (1 if args.smoke else 10),
        airbench=args.airbench,
        resnet_batches=tuple(int(b) for b in args.resnet_batches.split(",")),
        deadline=time.monotonic() + budget,
        deterministic=deterministic,
    )
    text, _ = report.run_check(ctx, parts)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
