"""Part "tests": what must hold on the accelerator before any figure is worth reading.

conv/pool   tests/layers/test_conv_algorithms.py, test_onednn.py and test_trial_conv.py
            (every conv and max-pool algorithm equal to XLA's, forward and gradient,
            at matmul precision "highest"), run by pytest in a subprocess;
two runs    the airbench network twice in deterministic mode, one compiled program:
            bit-identical params_sha256 (the determinism part compares processes);
bfloat16    a LeNet-5 run with compute_dtype bfloat16 whose parameters stay float32
            while its convolutions and matmuls run in bfloat16.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np

from research.bench.accel.common import (
    ROOT,
    Context,
    Row,
    configured,
    experiment,
    guarded,
    left,
    pct,
    pick,
    speedrun_smoke_config,
    train,
)


def part_tests(ctx: Context) -> list[Row]:
    return [guarded("tests", check, ctx) for check in (_conv_tests, _determinism, _bfloat16)]


def _conv_tests(ctx: Context) -> Row:
    # This process holds JAX's preallocated share of the GPU: the tests allocate as they go.
    env = {
        **os.environ,
        "JAX_DEFAULT_MATMUL_PRECISION": "highest",
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
    }
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    cmd += [
        f"tests/layers/{name}.py"
        for name in ("test_conv_algorithms", "test_onednn", "test_trial_conv")
    ]
    if ctx.smoke:  # two cases per algorithm and the pooling tests
        cmd += ["-k", "7-8-3 or max_pool or pool_algorithm"]
    proc = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=left(ctx, 300)
    )
    summary = (proc.stdout.strip().splitlines() or [""])[-1]
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|errors?|skipped)", summary)}
    ok = proc.returncode == 0 and counts.get("passed", 0) > 0
    return Row(
        "tests",
        "conv/pool algorithms = XLA's, fwd + grad (tests/layers/test_conv_algorithms.py etc., "
        "matmul precision highest)",
        summary or proc.stderr.strip()[-300:],
        "all pass",
        "pass" if ok else "fail",
        {"returncode": proc.returncode, **counts},
    )


def _determinism(ctx: Context) -> Row:
    # heavy: JAX only after the check has set XLA_FLAGS (scripts/accelerator_check.py)
    import jax

    if not ctx.deterministic:
        measure = "two runs, deterministic=True, bit-identical"
        return Row("tests", measure, "skipped: --deterministic off", verdict="skip")
    # In --smoke the speedrun part's very program (a persistent-cache hit there).
    config = speedrun_smoke_config(ctx, (8, 16, 16) if ctx.smoke else (64, 256, 256))
    config.deterministic = True
    if not ctx.smoke:
        config.data.train_size, config.batch_size = 8192, 1024
    _, outcomes = train(config, seeds=[0, 0])  # the same seed twice, one compiled program
    results = [o.results for o in outcomes]
    shas = [r["params_sha256"] for r in results]
    flags = os.environ.get("XLA_FLAGS", "")
    return Row(
        "tests",
        f"two runs, deterministic=True, bit-identical (airbench net, {results[0]['steps']} steps "
        f"of {config.batch_size}; {jax.default_backend()}; XLA_FLAGS={flags!r})",
        f"params_sha256 {'equal' if shas[0] == shas[1] else 'DIFFER'}: {shas[0][:12]}",
        "equal",
        "pass" if shas[0] == shas[1] else "fail",
        {"params_sha256": shas, "xla_flags": flags},
    )


def _contraction_dtypes(jaxpr) -> list[str]:
    """The input dtypes of every convolution and matmul in `jaxpr` (recursively)."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
            found.append("/".join(sorted({str(v.aval.dtype) for v in eqn.invars})))
        for sub in eqn.params.values():
            inner = getattr(sub, "jaxpr", sub)
            if hasattr(inner, "eqns"):
                found += _contraction_dtypes(inner)
    return found


def _bfloat16(ctx: Context) -> Row:
    # heavy: JAX only after the check has set XLA_FLAGS (scripts/accelerator_check.py)
    import jax
    import jax.numpy as jnp

    config = configured(
        ctx,
        experiment("lenet5_mnist").get_config(),
        compute_dtype="bfloat16",
        num_epochs=1,
        **{"data.train_size": 1024 if ctx.smoke else 0},
    )
    run, (outcome,) = train(config)
    result = outcome.results
    dtypes = {str(x.dtype) for x in jax.tree_util.tree_leaves(outcome.state.params)}
    x = jnp.zeros((2, *run.splits.input_shape), jnp.float32)
    variables = {"params": outcome.state.params}
    jaxpr = jax.make_jaxpr(lambda v, x: run.model.apply(v, x, train=False))(variables, x)
    contractions = _contraction_dtypes(jaxpr.jaxpr)
    bf16 = sum(d == "bfloat16" for d in contractions)
    ok = dtypes == {"float32"} and bf16 == len(contractions) > 0
    ok = ok and np.isfinite(result["test_loss"])
    return Row(
        "tests",
        "bf16 compute, float32 parameters (LeNet-5, MNIST, 1 epoch)",
        f"params {sorted(dtypes)}; {bf16}/{len(contractions)} convs/matmuls in bfloat16; "
        f"test acc {pct(result['test_accuracy'])}",
        "params float32, contractions bf16",
        "pass" if ok else "fail",
        {"param_dtypes": sorted(dtypes), "contractions": contractions, **pick(result)},
    )
