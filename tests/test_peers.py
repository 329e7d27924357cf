"""The peer benchmark (`pytest benchmarks/ --peers`): its opt-in and skip lines, the ratio it
records, and the table `bnbench report` makes of it. None of this needs PyTorch; the last tests,
in the slow tier, hold the peers' models to bnbench's where the peers are installed."""

import json
import math

import numpy as np
import pytest

from bnbench import pytest_plugin
from bnbench.measure import peers
from bnbench.record import schema
from bnbench.report import page, reading
from bnbench.report import peers as peer_report


class Config:
    def __init__(self, **given):
        self.given = given

    def getoption(self, flag, default=None):
        return self.given.get(flag, default)


def _skip_reason(param):
    marks = [m for m in param.marks if m.name == "skip"]
    return marks[0].kwargs["reason"] if marks else None


def test_without_peers_the_benchmark_is_one_case_skipped_before_any_setup():
    cases = pytest_plugin.peer_cases(Config(**{"--peers": False}))
    assert len(cases) == 1 and cases[0].values == (None,)
    assert _skip_reason(cases[0]) == "opt in with --peers"


def test_with_peers_a_missing_peer_is_skipped_with_one_line_naming_it_and_the_install(monkeypatch):
    monkeypatch.setitem(peers.PEERS, "pytorch", ("bnbench_no_such_package", None))
    monkeypatch.setitem(peers.PEERS, "keras", ("numpy", None))  # installed: runs
    cases = pytest_plugin.peer_cases(Config(**{"--peers": True}))
    by_id = {c.id: c for c in cases}
    assert set(by_id) == {f"{p}-{v}" for p in ("pytorch", "keras") for v in peers.VARIANTS}
    reasons = {_skip_reason(c) for i, c in by_id.items() if i.startswith("pytorch-")}
    assert reasons == {"pytorch: bnbench_no_such_package is not installed; install the peers with "
                       "pip install 'bnbench[peers]'"}  # one reason for all: pytest shows it as one line
    assert all(_skip_reason(c) is None for i, c in by_id.items() if i.startswith("keras-"))
    with pytest.raises(peers.PeerMissing, match="bnbench_no_such_package is not installed"):
        peers.program("pytorch", "seed_plain", np.zeros((64, 28, 28), np.uint8), np.zeros(64, np.int32), 2)


def test_a_peer_older_than_timed_is_named_with_its_version(monkeypatch):
    monkeypatch.setitem(peers.PEERS, "keras", ("numpy", (999, 0)))
    reason = peers.missing("keras")
    assert reason.startswith("keras: numpy ") and "is older than 999.0" in reason and peers.INSTALL in reason
    assert "\n" not in reason


def test_the_summary_says_each_missing_peer_once(monkeypatch):
    monkeypatch.setitem(peers.PEERS, "pytorch", ("bnbench_no_such_package", None))
    monkeypatch.setitem(peers.PEERS, "keras", ("numpy", None))
    lines = []

    class Reporter:
        def write_line(self, line):
            lines.append(line)

    pytest_plugin.pytest_terminal_summary(Reporter(), Config(**{"--peers": True}))
    assert lines == ["bnbench: skipped pytorch: bnbench_no_such_package is not installed; install the peers with "
                     "pip install 'bnbench[peers]'"]
    lines.clear()
    pytest_plugin.pytest_terminal_summary(Reporter(), Config(**{"--peers": False}))
    assert lines == []


def test_the_ratio_is_the_median_of_each_rounds_peer_over_bnbench():
    # The machine slows down in round 3 for both: the paired ratio keeps it out.
    bnbench_rounds, peer_rounds = [0.20, 0.22, 0.60, 0.21], [0.30, 0.33, 0.90, 0.42]
    c = peers.comparison("pytorch", "2.13.0", "conv_bn", 200, peer_rounds, bnbench_rounds)
    assert c["ratios"] == pytest.approx([1.5, 1.5, 1.5, 2.0])
    assert c["ratio"] == pytest.approx(1.5)
    assert c["peer_step_s"]["median"] == pytest.approx(np.median(peer_rounds) / 200)
    assert c["bnbench_step_s"]["median"] == pytest.approx(np.median(bnbench_rounds) / 200)
    assert (c["steps"], c["rounds"], c["batch_size"], c["peer_version"]) == (200, 4, 32, "2.13.0")
    with pytest.raises(ValueError, match="alternation"):
        peers.comparison("pytorch", "2.13.0", "conv_bn", 200, peer_rounds, bnbench_rounds[:3])


def test_a_round_repeats_the_data_where_it_has_too_few_batches():
    images = np.arange(70 * 4, dtype=np.uint8).reshape(70, 2, 2)  # 2 whole batches, 6 left over
    x, y = peers.round_data(images, np.arange(70), 5)
    assert x.shape == (160, 2, 2) and list(y[:3]) == [0, 1, 2] and list(y[64:67]) == [0, 1, 2]


@pytest.mark.parametrize("name", ["seed_bn", "conv_bn"])
def test_bnbenchs_round_is_its_step_applied_to_each_batch_in_turn(name):
    """The round the peers are set against trains as the step does, one batch after another: the
    same state to float32's rounding (XLA may fuse a loop's body differently from a lone step)."""
    import functools

    import jax

    from bnbench.data.synthetic import synthetic_dataset
    from bnbench.engine import train
    from bnbench.measure import steptime
    from bnbench.models import variants

    data = synthetic_dataset(train=200, validation=10, test=10)
    images, labels = peers.round_data(data.train_images, data.train_labels, 4)
    variant = variants.get(name)
    rounds = steptime.RoundProgram(variant, images, labels)
    state = train.initializer(variant.model, tuple(images.shape[1:]), train.Protocol().kind)(jax.random.PRNGKey(0))
    assert rounds.steps == 4 and jax.tree.all(jax.tree.map(lambda a, b: (a == b).all(), state, rounds.state))
    step = jax.jit(functools.partial(train.train_step, variant.model, train.Protocol().transform()))
    for i in range(4):
        state, _ = step(state, images[i * 32:(i + 1) * 32], labels[i * 32:(i + 1) * 32])
    rounds()
    assert len(rounds.times) == 1 and rounds.times[0] > 0
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(rounds.state)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)


def _comparison(variant, peer, ratio, bnbench_s=0.002):
    times = [bnbench_s * 200 * (1 + k / 100) for k in range(3)]
    return peers.comparison(peer, "9.9", variant, 200, [t * ratio for t in times], times)


def _peer_file(tmp_path, comparisons):
    env = {"backend": "cpu", "cpu_model": "Test CPU", "usable_cores": 2}
    benchmarks = [{"name": f"test_peer_step_time[{c['peer']}-{c['variant']}]",
                   "stats": {"median": c["peer_step_s"]["median"] * 200},
                   "extra_info": {"bnbench": "peer", **c}} for c in comparisons]
    path = tmp_path / "pb.json"
    path.write_text(json.dumps({"machine_info": {"bnbench": env}, "benchmarks": benchmarks}))
    return path


def test_bnbench_report_shows_a_table_of_variants_by_peer(tmp_path):
    comparisons = [_comparison("conv_plain", "pytorch", 1.31), _comparison("conv_plain", "keras", 1.62),
                   _comparison("seed_bn", "pytorch", 0.8)]
    path = _peer_file(tmp_path, comparisons)
    loaded = reading.load_all([path])
    assert [c["ratio"] for c in loaded[0]["peers"]] == pytest.approx([1.31, 1.62, 0.8])
    page.write_citable([str(path)], tmp_path / "page")
    text = (tmp_path / "page" / "README.md").read_text()
    assert "## Against other frameworks [1]" in text and "Test CPU, 2 cores (cpu)" in text
    rows = [line for line in text.splitlines() if line.startswith("| conv_plain") or line.startswith("| seed_bn")]
    assert rows == [
        "| conv_plain | keras 9.9   | 3.272          | 2.020             | 1.62x          | 3 x 200          |",
        "| conv_plain | pytorch 9.9 | 2.646          | 2.020             | 1.31x          | 3 x 200          |",
        "| seed_bn    | pytorch 9.9 | 1.616          | 2.020             | 0.80x          | 3 x 200          |"]
    assert "its step compiled as one loop over the round's batches" in text
    # A report from before the compiled loop says that its bnbench side was lone steps.
    older = _peer_file(tmp_path, [{k: v for k, v in c.items() if k != "bnbench_round"} for c in comparisons])
    page.write_citable([str(older)], tmp_path / "older", force=True)
    assert "lone compiled steps (synchronised after each update" in (tmp_path / "older" / "README.md").read_text()


def test_a_peer_figure_out_of_range_is_one_line_naming_it(tmp_path):
    bad = _comparison("conv_bn", "pytorch", 1.4)
    bad["ratio"] = -1.0
    with pytest.raises(reading.ReportError, match=r"benchmarks\[0\]\.extra_info\.ratio: expected a number > 0"):
        reading.load(_peer_file(tmp_path, [bad]))


def test_a_run_report_keeps_its_peers_and_its_pytest_benchmark_twin_lends_them(tmp_path):
    from report_helpers import RUN_ID, as_pytest_benchmark, harness_report, write

    report = harness_report()
    compared = [_comparison("seed_bn", "keras", 1.7)]
    with_peers = {**report, "peers": compared}
    schema.check(with_peers)
    assert reading.load(write(tmp_path / "r.json", with_peers))["peers"] == compared
    # The harness's two files of one session: the peers in pytest-benchmark's alone reach the page.
    pb = as_pytest_benchmark(report)
    pb["benchmarks"] += [{"name": "test_peer_step_time[keras-seed_bn]", "stats": {"median": 1.0},
                          "extra_info": {"bnbench": "peer", **c}} for c in compared]
    loaded = reading.load_all([write(tmp_path / "run.json", report), write(tmp_path / "pb.json", pb)])
    assert len(loaded) == 1 and loaded[0]["run_id"] == RUN_ID and loaded[0]["peers"] == compared
    assert "| seed_bn | keras 9.9 |" in peer_report.table(loaded[0]["peers"])


# ---- the peers' models, where the peers are installed (slow tier) --------------------------------


def _bnbench_forward(name, params, stats, images, train):
    import jax.numpy as jnp

    from bnbench.models import variants
    from bnbench.models.mlp import normalize

    model = variants.get(name).model
    variables = {"params": params, "batch_stats": stats}
    if train:
        return np.asarray(model.apply(variables, normalize(jnp.asarray(images)), train=True,
                                      mutable=["batch_stats"])[0])
    return np.asarray(model.apply(variables, normalize(jnp.asarray(images)), train=False))


def _torch_to_flax(module, name):
    """The torch model's weights in bnbench's collections: kernels transposed; the ConvNet's Dense
    kernel's rows from PyTorch's (channel, height, width) flattening to bnbench's (height, width, channel)."""
    import jax.numpy as jnp
    from torch import nn

    params, stats, counts = {}, {}, {}
    layers = list(module)
    conv_channels = None
    for layer in layers:
        kind = {nn.Linear: "Dense", nn.Conv2d: "Conv", nn.BatchNorm1d: "BatchNorm", nn.BatchNorm2d: "BatchNorm"}.get(
            type(layer))
        if kind is None:
            continue
        key = f"{kind}_{counts.setdefault(kind, 0)}"
        counts[kind] += 1
        w = layer.weight.detach().numpy()
        if kind == "Conv":
            params[key] = {"kernel": w.transpose(2, 3, 1, 0)}
            conv_channels = w.shape[0]
        elif kind == "Dense":
            kernel = w.T
            if conv_channels is not None:
                side = math.isqrt(kernel.shape[0] // conv_channels)
                kernel = kernel.reshape(conv_channels, side, side, -1).transpose(1, 2, 0, 3).reshape(kernel.shape)
            params[key] = {"kernel": kernel}
        else:
            params[key] = {"scale": w}
            stats[key] = {"mean": layer.running_mean.numpy(), "var": layer.running_var.numpy()}
        if layer.bias is not None:
            params[key]["bias"] = layer.bias.detach().numpy()
    to_jax = lambda tree: {k: {n: jnp.asarray(v) for n, v in d.items()} for k, d in tree.items()}  # noqa: E731
    return to_jax(params), to_jax(stats)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(peers.VARIANTS))
def test_the_pytorch_model_computes_bnbench_s_with_the_same_weights(name):
    """The same layers, in the same order, with bnbench's shapes: copied weights give the same
    logits, in training mode (batch statistics) and evaluation mode (moving statistics)."""
    torch = pytest.importorskip("torch")
    import jax

    from bnbench.engine import train
    from bnbench.models import variants

    torch.manual_seed(0)
    module = peers.torch_model(name, (28, 28))
    params, stats = _torch_to_flax(module, name)
    ours = train.initializer(variants.get(name).model, (28, 28))(jax.random.PRNGKey(0))
    shapes = lambda tree: {k: {n: tuple(v.shape) for n, v in d.items()} for k, d in tree.items()}  # noqa: E731
    assert shapes(params) == shapes(ours.params) and shapes(stats) == shapes(ours.batch_stats)
    images = np.random.default_rng(0).integers(0, 256, (32, 28, 28)).astype(np.uint8)
    for train_mode in (False, True):  # evaluation first: a training-mode forward moves PyTorch's statistics
        module.train(train_mode)
        with torch.no_grad():
            theirs = module(peers.torch_images(torch.from_numpy(images))).numpy()
        np.testing.assert_allclose(_bnbench_forward(name, params, stats, images, train_mode), theirs,
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(peers.VARIANTS))
def test_the_keras_model_has_bnbench_s_layers(name):
    """Keras' model for the peer benchmark: bnbench's parameters, shape for shape, and a first
    ``fit`` round that trains (its loss is finite and it changes the weights)."""
    if peers.missing("keras"):
        pytest.skip(peers.missing("keras"))
    try:
        program = peers.KerasProgram(name, np.random.default_rng(0).integers(0, 256, (64, 28, 28)).astype(np.uint8),
                                     np.arange(64, dtype=np.int32) % 10, steps=2)
    except peers.PeerMissing as e:
        pytest.skip(str(e))
    import jax

    from bnbench.engine import train
    from bnbench.models import variants

    ours = train.initializer(variants.get(name).model, (28, 28))(jax.random.PRNGKey(0))
    count = lambda tree: sum(int(np.prod(v.shape)) for v in jax.tree.leaves(tree))  # noqa: E731
    assert sum(int(np.prod(w.shape)) for w in program.model.weights) == count(ours.params) + count(ours.batch_stats)
    before = [np.asarray(w) for w in program.model.trainable_weights]
    program()
    assert any(not np.allclose(b, np.asarray(w)) for b, w in zip(before, program.model.trainable_weights))
