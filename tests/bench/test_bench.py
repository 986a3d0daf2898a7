"""The benchmark's peers are the zoo's models: same parameter counts, checked loudly."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import pytest

from research import models
from research.bench import frameworks, peers
from tests.helpers.requirements import requires

BENCH_NAMES = sorted(peers.BENCH_MODELS)

# The zoo's counts at 28x28x1 with 10 classes (LeNet-5: the paper's 61,706 via padding=2;
# the lecture CNN: the lecture's Keras summary).
ZOO_COUNTS = {"lenet5": 61_706, "lecture_cnn": 538_698}


def test_bench_models_are_zoo_models():
    assert set(BENCH_NAMES) == set(ZOO_COUNTS)
    for name in BENCH_NAMES:
        assert name in models.MODELS
        assert peers.zoo_param_count(name) == ZOO_COUNTS[name]


@pytest.mark.parametrize("name", BENCH_NAMES)
def test_flax_plain_peer_has_the_zoo_parameter_count(name):
    model = peers.flax_plain_model(name)
    x = jax.ShapeDtypeStruct((2, *peers.INPUT_SHAPE), jnp.float32)  # shapes only: no compute
    variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)
    assert models.param_count(variables) == ZOO_COUNTS[name]
    assert jax.eval_shape(model.apply, variables, x).shape == (2, peers.NUM_CLASSES)


@pytest.mark.parametrize("name", BENCH_NAMES)
def test_torch_peer_has_the_zoo_parameter_count(name):
    torch = requires("torch")
    model = peers.torch_model(name)
    assert sum(p.numel() for p in model.parameters()) == ZOO_COUNTS[name]
    assert tuple(model(torch.zeros(2, 1, 28, 28)).shape) == (2, peers.NUM_CLASSES)


@pytest.mark.parametrize("name", BENCH_NAMES)
def test_keras_peer_has_the_zoo_parameter_count(name, monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", os.environ.get("KERAS_BACKEND", "jax"))
    requires("keras")
    model = peers.keras_model(name)
    assert model.count_params() == ZOO_COUNTS[name]
    assert model.output_shape == (None, peers.NUM_CLASSES)


def test_a_peer_of_another_size_is_refused():
    peers.check_param_count("lenet5", "torch", 61_706)  # equal: nothing happens
    with pytest.raises(
        ValueError, match=r"torch lenet5 has 61,707 parameters, the zoo's lenet5 61,706"
    ):
        peers.check_param_count("lenet5", "torch", 61_707)


def test_ours_runner_trains_the_zoo_model():
    runner = frameworks.build("ours", "lenet5", batch=8, steps=2)
    assert runner.params == ZOO_COUNTS["lenet5"]
    assert "conv=" in runner.notes and runner.compile_s > 0
    runner.run()  # two more steps, synchronised


def test_synthetic_splits_shapes_and_one_generator():
    splits = frameworks.synthetic_splits((8, 8, 3), 12, 4, seed=1)
    assert [len(s) for s in (splits.train, splits.val, splits.test)] == [12, 4, 4]
    assert splits.train.images.shape == (12, 8, 8, 3) and splits.input_shape == (8, 8, 3)
    assert splits.mean == (0.5,) * 3 and splits.std == (0.25,) * 3
    assert int(splits.train.labels.max()) < peers.NUM_CLASSES
    again = frameworks.synthetic_splits((8, 8, 3), 12, 4, seed=1)
    assert (again.test.images == splits.test.images).all()
    assert not (splits.val.images == splits.test.images).all()  # drawn one after another


@pytest.mark.slow
def test_compile_time_measures_each_phase_and_compares_the_numbers():
    from research.bench import compile_time

    r = compile_time.measure("lenet5", (28, 28, 1), batch=8, steps=1)
    assert list(r["wall"]) == [
        "build", "init_trace", "init_lower", "init_compile", "init_run",
        "trace", "lower", "compile", "first_step",
    ]  # fmt: skip
    assert r["first_step_s"] == pytest.approx(sum(r["wall"].values()))
    assert r["params"] == ZOO_COUNTS["lenet5"] and r["hlo_chars"] > 0
    assert r["loss_finite"] is True and isinstance(r["step_ms"], float)
    # The same build again gives the same numbers, bit for bit ("same init/step": yes).
    again = compile_time.measure("lenet5", (28, 28, 1), batch=8, steps=0)
    assert (again["init_sha256"], again["params_sha256"]) == (r["init_sha256"], r["params_sha256"])


PROFILE_SCRIPT = """
import json, jax, jax.numpy as jnp
from research.bench import profile
x = jnp.ones((512, 512))
f = jax.jit(lambda x: jnp.tanh(x @ x) @ x)
jax.block_until_ready(f(x))
events = profile.top_events(lambda: jax.block_until_ready(f(x)), calls=3, top=5)
print(json.dumps(events))
print(profile.markdown(events))
"""


def test_profile_sums_the_programs_own_events_per_call():
    import json
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run(
        [sys.executable, "-c", PROFILE_SCRIPT], cwd=root, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    first, *table = [line for line in proc.stdout.splitlines() if line]
    events = json.loads(first)
    assert 0 < len(events) <= 5
    # Longest first; the two matmuls (thunks) are there, once per call each; no Python frames,
    # no executor wrappers.
    assert [e["ms_per_call"] for e in events] == sorted(
        (e["ms_per_call"] for e in events), reverse=True
    )
    assert all(
        e["ms_per_call"] > 0 and not e["name"].startswith(("$", "ThunkExecutor")) for e in events
    )
    assert any(e["count_per_call"] == 1 for e in events)
    assert table[:2] == ["| event | ms per call | times per call |", "|---|---:|---:|"]
    assert len(table) == 2 + len(events)


def test_layer_of_reads_the_models_op_names():
    from research.bench import profile

    body = "jit(chunk)/while/body/closed_call"
    assert profile.layer_of(f"{body}/jvp(LectureCNN)/conv2/dot_general") == ("conv2", "forward")
    assert profile.layer_of(f"{body}/transpose(jvp(LectureCNN))/conv2/transpose") == (
        "conv2",
        "backward",
    )
    # A function the model calls between layers names its own row; the model's own
    # operations outside any layer are charged to the model.
    assert profile.layer_of(f"{body}/jvp(LectureCNN)/jit(relu)/max") == ("relu", "forward")
    assert profile.layer_of(f"{body}/transpose(jvp(LectureCNN))/select_n") == (
        "LectureCNN",
        "backward",
    )
    # Nested modules: the model's top-level layer.
    assert profile.layer_of("jvp(ResNet)/stage1_block0/conv1/dot_general") == (
        "stage1_block0",
        "forward",
    )
    assert profile.layer_of(f"{body}/mul") is None  # the optimizer's arithmetic


SMALL_HLO = """\
HloModule jit_chunk

%fused_computation.1 (param_0: f32[8]) -> f32[8] {
  %param_0 = f32[8]{0} parameter(0)
  %zero = f32[8]{0} broadcast(%c), metadata={op_name="jvp(Net)/dropout/broadcast_in_dim"}
  %mask.1 = f32[8]{0} select(%p, %param_0, %zero), metadata={op_name="transpose(jvp(Net))/pool1/s"}
  ROOT %add.1 = f32[8]{0} add(%mask.1, %param_0), metadata={op_name="transpose(jvp(Net))/conv2/a"}
}

ENTRY %main.9 (a: f32[8]) -> f32[8] {
  %a = f32[8]{0} parameter(0)
  %dot.3 = f32[8]{0} dot(%a, %a), metadata={op_name="jvp(Net)/conv1/dot_general"}
  %add_fusion.2 = f32[8]{0} fusion(%dot.3), kind=kLoop, calls=%fused_computation.1, metadata={}
  %while.4 = (s32[], f32[8]{0}) while(%t), condition=%c, body=%b, metadata={op_name="jvp(Net)/w"}
  ROOT %multiply.5 = f32[8]{0} multiply(%add_fusion.2, %a), metadata={op_name="mul"}
}
"""


def test_by_layer_charges_each_event_to_its_layers_and_phase():
    from research.bench import profile

    sources = profile.hlo_sources(SMALL_HLO)
    # The fusion's own op_name is missing here; the broadcast (a zero XLA may share
    # with another layer) is left out.
    assert sources["add_fusion.2"] == (
        "fusion",
        ["transpose(jvp(Net))/pool1/s", "transpose(jvp(Net))/conv2/a"],
    )
    assert sources["while.4"][0] == "while" and sources["dot.3"][0] == "dot"
    events = [
        {"name": "dot.3", "ms_per_call": 2.0, "count_per_call": 1},
        {"name": "add_fusion.2", "ms_per_call": 5.0, "count_per_call": 1},
        {"name": "while.4", "ms_per_call": 9.0, "count_per_call": 1},  # a loop: left out
        {"name": "multiply.5", "ms_per_call": 0.5, "count_per_call": 1},
        {"name": "cutlass_gemm", "ms_per_call": 1.0, "count_per_call": 2},  # not in the module
    ]
    rows = profile.by_layer(events, SMALL_HLO)
    zero = {"forward": 0.0, "backward": 0.0, "other": 0.0}
    assert rows == [
        {"layer": "pool1+conv2", **zero, "backward": 5.0, "events": 1},
        {"layer": "conv1", **zero, "forward": 2.0, "events": 1},
        {"layer": "unattributed", **zero, "other": 1.0, "events": 2},
        {"layer": profile.OTHER, **zero, "other": 0.5, "events": 1},
    ]
    table = profile.layer_markdown(rows, per=2).splitlines()
    assert table[0] == "| layer | forward ms | backward ms | other ms | events |"
    assert table[2] == "| pool1+conv2 |  | 2.50 |  | 0.5 |"
    assert table[4] == "| unattributed |  |  | 0.50 | 1 |"
    assert table[-1] == "All events: 4.25 ms."
    # The events and PyTorch's operators, per step of calls of 2 steps.
    events_table = profile.markdown(events[:1], per=2, unit="step").splitlines()
    assert events_table[0] == "| event | ms per step | times per step |"
    assert events_table[2] == "| dot.3 | 1.000 | 0.5 |"
    ops = [{"name": "aten::mm", "shapes": "[[8, 4]]", "ms_per_call": 3.0, "count_per_call": 4}]
    ops_table = profile.torch_markdown(ops, per=2, unit="step").splitlines()
    assert ops_table[0] == "| operator | input shapes | ms per step | calls per step |"
    assert ops_table[2] == "| aten::mm | [[8, 4]] | 1.50 | 2 |"


@pytest.mark.slow  # in the full tier: keeps the fast tier under 5 minutes
def test_bench_profile_mode_tables_our_layers_and_torchs_operators():
    import subprocess
    import sys

    requires("torch")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cmd = [sys.executable, "scripts/bench.py", "--mode", "profile", "--models", "lenet5"]
    cmd += ["--batch-sizes", "8", "--frameworks", "ours,torch", "--steps", "2", "--repeats", "1"]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    ours = out.split("### lenet5, batch 8, ours")[1].split("###")[0]
    layer_table = ours.split("| layer |")[1].split("All events:")[0]  # header row cut off
    rows = {
        cells[1].strip(): [float(c) if c.strip() else 0.0 for c in cells[2:4]]
        for line in layer_table.splitlines()
        if line.startswith("| ")
        for cells in [line.split("|")]
    }
    # LeNet-5's two convolutions run forward and backward in the scanned step (XLA may fuse
    # a convolution with its neighbours: such rows name every layer they hold).
    for conv in ("conv1", "conv2"):
        for phase in (0, 1):
            assert any(conv in k.split("+") and v[phase] > 0 for k, v in rows.items()), rows
    torch_part = out.split("### lenet5, batch 8, torch")[1]
    assert "| aten::convolution_backward |" in torch_part


# ------------------------------------------------------------------ the measurement helper


def test_steady_and_cycled_rows_worked_examples():
    from research.bench import measure

    # The first call compiles: the median of the others, and how much longer the first took.
    assert measure.steady([5.0, 1.0, 3.0, 2.0]) == (2.0, 3.0)
    assert measure.steady([4.0]) == (4.0, 0.0)  # one call is its own steady time
    rows = measure.cycled_rows(trials=2, steps=2, batch=3, n=4)
    assert rows.shape == (2, 2, 3) and rows.dtype.name == "int32"
    assert rows[0].tolist() == [[0, 1, 2], [3, 0, 1]] and (rows[1] == rows[0]).all()


def _tiny_sweep_configs(count: int):
    from research.bench import sweep_mode

    config = sweep_mode._sweep_config("simple_cnn")
    config.batch_size = 8
    out = []
    for i in range(count):
        c = config.copy_and_resolve_references()
        c.seed, c.optim.learning_rate = i, 1e-3 * (1 + i)
        out.append(c)
    return out


def test_a_group_times_the_engines_chunk_and_restarts_bit_for_bit():
    from research.bench import measure
    from research.train import loop
    from research.train.checkpoint import tree_sha256

    configs = _tiny_sweep_configs(2)
    splits = frameworks.synthetic_splits((8, 8, 1), 64, 8)
    run = loop.build_run(configs[0], splits=splits)
    group = measure.Group.build(run, configs, "vmap")
    assert group.trials == 2 and group.hyperparams["learning_rate"].tolist() == pytest.approx(
        [1e-3, 2e-3]
    )
    rows = measure.first_chunk_rows(configs, group.data_keys, n=64, steps=3)
    assert rows.shape == (2, 3, 8)  # (trials, steps, batch), each trial its own order
    assert sorted(rows[0].ravel().tolist()) == sorted(set(rows[0].ravel().tolist()))
    assert rows[0].tolist() != rows[1].tolist()
    hashes = []
    for _ in range(2):  # the same group from its init again: the same bits
        group.init()
        group.place(splits.train.images, splits.train.labels, rows)
        times = group.time(calls=2)
        assert len(times) == 2 and all(t > 0 for t in times)
        assert group.metrics["loss"].shape == (2, 3)
        hashes.append(tree_sha256(group.states.params))
    assert hashes[0] == hashes[1]


def test_probe_times_one_trial_and_the_vmapped_group():
    from research.sweep import vmapped

    configs = _tiny_sweep_configs(2)
    splits = frameworks.synthetic_splits((8, 8, 1), 64, 8)
    p = vmapped.probe(configs, splits, steps=2)
    assert (p["trials"], p["steps"]) == (2, 2)
    assert p["sequential_trial_steps_per_s"] > 0 and p["vmap_trial_steps_per_s"] > 0
    alone = vmapped.probe(configs, splits, steps=2, sequential=False)
    assert alone["sequential_trial_steps_per_s"] is None and alone["vmap_trial_steps_per_s"] > 0
