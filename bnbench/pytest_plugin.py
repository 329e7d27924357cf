"""bnbench's pytest-benchmark harness: options, machine info, and the session's bnbench report.

Everything goes through pytest's and pytest-benchmark's hooks, so pytest-benchmark's own options
(--benchmark-json, --benchmark-autosave, --benchmark-compare) and `pytest-benchmark compare` work
as usual; bnbench adds its environment to machine_info and writes its own report at the end.
``benchmarks/conftest.py`` loads these hooks; the options shared with `bnbench run` come from
``bnbench.options``.
"""

from __future__ import annotations

import collections
from pathlib import Path

import jax
import pytest

from bnbench import options
from bnbench.data import sources as data_lib
from bnbench.engine import train
from bnbench.errors import EXIT_REPORT_MOVED, BnbenchError
from bnbench.measure import environment, experiment, peers, steptime
from bnbench.models import variants
from bnbench.options import Option, positive_int, whole
from bnbench.parallel import devices, distributed, preflight
from bnbench.record.io import ReportClaim, claim_default, finite
from bnbench.report.summary import divergence_news, summary_table

# The harness's own options; those it shares with `bnbench run` are options.HARNESS.
VARIANTS = Option("--variants", "comma-separated variants to benchmark (default: seed_plain,seed_bn; `bnbench "
                  "variants` lists them; NAME:FIELD=VALUE changes a field of a variant's model)",
                  ",".join(variants.NOTEBOOK_VARIANTS))
SCALING_SEEDS = Option("--scaling-seeds", "run the seed-scaling benchmark: an epoch of K seeds trained together "
                       "against one seed's (off by default: it costs about a minute per variant on 2 cores)",
                       0, whole(0), metavar="K")
SWEEP_CONFIGS = Option("--sweep-configs", "run the sweep-cost benchmark: an epoch of N learning rates of one seed "
                       "against one of N seeds (off by default)", 0, whole(0), metavar="N")
SCALING_DEVICES = Option("--scaling-devices", "run the data-parallel scaling benchmark: an epoch's time and "
                         "examples per second at each device count (for instance 1,2,4), for sync BN, local BN "
                         "and LayerNorm (off by default)", "", metavar="N,N,...")
FLOOR_EVERY = Option("--floor-every", "time the matmul floor after every K-th training epoch and the last (each "
                     "floor costs about an epoch's matmuls; 1 times it after every epoch)", 2, positive_int,
                     metavar="K")
PEERS = Option("--peers", "also time the same models in PyTorch eager and Keras 3 on JAX against bnbench's step "
               "(seed_plain, seed_bn, conv_plain, conv_bn; needs pip install 'bnbench[peers]'; a peer not "
               "installed is skipped with one line)", False, switch=True)
REPORT = Option("--bnbench-report", "where to write bnbench's JSON report (default: "
                "reports/benchmark-<date>-<time>.json); an existing file is kept unless --bnbench-force",
                metavar="FILE", per_process=True)
OWN = (VARIANTS, SCALING_SEEDS, SWEEP_CONFIGS, SCALING_DEVICES, FLOOR_EVERY, PEERS, REPORT)


def pytest_addoption(parser):
    group = parser.getgroup("bnbench")
    options.add_to_pytest(group, (VARIANTS, *options.HARNESS, SCALING_SEEDS, SWEEP_CONFIGS, SCALING_DEVICES,
                                  FLOOR_EVERY, PEERS, REPORT))
    group.addoption("--quick", action="store_true",
                    help="smoke run: synthetic data, 1 epoch, few rounds (under 30 s on 2 cores)")
    group.addoption("--bnbench-force", action="store_true",
                    help="replace the reports at --bnbench-report and --benchmark-json if they exist")


def variant_names(config) -> list[str]:
    return variants.names(config.getoption("--variants"))


# What the scaling benchmark compares: BatchNorm with each kind of statistics, and LayerNorm, which needs none.
SCALING_CASES = (("seed_bn", "sync"), ("seed_bn", "local"), ("layer_norm", "sync"))


def scaling_devices(config) -> list[int]:
    text = config.getoption("--scaling-devices")
    try:
        counts = [int(x) for x in text.split(",")] if text else []
    except ValueError:
        raise pytest.UsageError(f"--scaling-devices {text!r}: give device counts separated by commas, as 1,2,4"
                                ) from None
    if any(n < 1 for n in counts) or len(set(counts)) != len(counts):
        raise pytest.UsageError(f"--scaling-devices {text!r}: each count must be 1 or more, and given once")
    return counts


def peer_cases(config) -> list:
    """The peer benchmark's cases, (peer, variant), each skipped before any fixture is set up (so
    at no cost) without --peers, or where its peer is not installed (the reason: one line)."""
    if not config.getoption("--peers"):
        return [pytest.param(None, id="off", marks=pytest.mark.skip(reason=f"opt in with {PEERS.flag}"))]
    cases = []
    for peer in peers.PEERS:
        reason = peers.missing(peer)
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        cases += [pytest.param((peer, name), id=f"{peer}-{name}", marks=marks) for name in peers.VARIANTS]
    return cases


def pytest_generate_tests(metafunc):
    if "peer_case" in metafunc.fixturenames:
        metafunc.parametrize("peer_case", peer_cases(metafunc.config))
    if "variant_name" in metafunc.fixturenames:
        metafunc.parametrize("variant_name", variant_names(metafunc.config))
    if "scaling_case" in metafunc.fixturenames:
        cases = [(v, b, n) for v, b in SCALING_CASES for n in scaling_devices(metafunc.config)] or [None]
        metafunc.parametrize("scaling_case", cases, ids=lambda c: "-".join(map(str, c)) if c else "off")


class Session:
    """What the benchmarks share: options, the data on the device, and the results for the report."""

    def __init__(self, config):
        opt = config.getoption
        self.quick = opt("--quick")
        self.precision = opt("--precision")
        for name in variant_names(config):
            self.variant(name)  # an unknown name stops the session with one line, before any benchmark
        self.protocol = train.Protocol(epochs=1 if self.quick else opt("--epochs"), optimizer=opt("--optimizer"),
                                       momentum=opt("--momentum"), weight_decay=opt("--weight-decay"),
                                       batch_order=options.single(options.BATCH_ORDER, opt("--batch-order"),
                                                                  "pytest benchmarks/"))
        self.seeds = list(range(opt("--seeds")))
        self.scaling_seeds = opt("--scaling-seeds")
        self.sweep_configs = opt("--sweep-configs")
        self.target = opt("--target")
        self.parallel = devices.DataParallel(opt("--data-parallel"), opt("--batch-stats"))
        self.main_process = config._bnbench_main_process
        self.floor_every = opt("--floor-every")
        if self.quick:
            from bnbench.data.synthetic import synthetic_dataset
            self.dataset = synthetic_dataset()
        else:
            self.dataset = data_lib.load(opt("--dataset"), opt("--data-dir"), download_url=opt("--download-url"))
        for name in variant_names(config):
            self.variant(name).check(self.dataset.train_images.shape[1:], self.dataset.num_classes)
        # Before any benchmark, in one line; and every process of a job ready with the same arguments.
        preflight.ready_to_train(self.parallel, [self.protocol.batch_size], len(self.seeds), self.dataset,
                                 config.invocation_params.args, device_counts=scaling_devices(config),
                                 variants=[variants.get(name) for name in variant_names(config)],
                                 batch_orders=[self.protocol.batch_order])
        self.data = train.DeviceData.from_dataset(self.dataset)
        self.backend = jax.default_backend()
        self.step_rounds = 20 if self.quick else 300
        self.floor_repeats = 2 if self.quick else 5  # timings of a step's floor (200 steps each)
        self.scaling_rounds = 2 if self.quick else 5  # epochs of K runs: seconds each
        self.results: dict[str, dict] = {}  # accuracy benchmark results, per variant
        self.step_programs: dict[tuple, object] = {}  # compiled steps, shared by the step-time and scaling benchmarks
        # Per variant, what the step and seed-scaling benchmarks add to the report's summary.
        self.summary_extras: dict[str, dict] = collections.defaultdict(dict)
        self.scaling: list[dict] = []  # the data-parallel scaling benchmark's points
        self.peer_steps = 20 if self.quick else 200  # updates per round of the peer benchmark
        self.peer_rounds = 2 if self.quick else 7
        self.peers: list[dict] = []  # the peer benchmark's comparisons
        self.run_id = config._bnbench_run_id

    def variant(self, name: str) -> variants.Variant:
        """The variant ``name`` at the session's --precision (unless its name sets one)."""
        return variants.get(name, precision=self.precision)

    def step_program(self, variant_name: str, batch_size: int) -> steptime.StepProgram:
        """Compiled once per session: the step-time, scaling and peer benchmarks share them."""
        key = (variant_name, batch_size)
        if key not in self.step_programs:
            self.step_programs[key] = steptime.StepProgram(self.variant(variant_name), self.data,
                                                           batch_size=batch_size, protocol=self.protocol)
        return self.step_programs[key]


def _read_options(config) -> None:
    """The options' text checked and parsed with the CLI's parsers: a bad value is one line. A
    smoke run (--quick) trains synthetic data for one epoch: options that would change that stop it."""
    ignored = [o.flag for o in (*options.DATA, options.EPOCHS) if getattr(config.option, o.dest, None) is not None]
    if config.getoption("--quick") and ignored:
        raise pytest.UsageError(f"--quick trains synthetic data for 1 epoch, so {', '.join(ignored)} would be "
                                "ignored: drop --quick, or drop those options")
    try:
        options.read_pytest(config.option, (*options.HARNESS, *OWN))
    except options.BadValue as e:
        raise pytest.UsageError(str(e)) from None


def _runs_nothing(config) -> bool:
    """pytest asked only to show something (help, fixtures, markers, the collection): no report."""
    option = config.option
    return any(getattr(option, name, False) for name in ("help", "version", "collectonly", "showfixtures",
                                                         "show_fixtures_per_test", "markers"))


def _claim_report(config):
    """The session's bnbench report path, claimed now (``io.ReportClaim``): a path that cannot be
    written, an existing report, or another session writing the same one stops the session before
    any benchmark runs, not at the end. Only process 0 of a job writes."""
    if not config._bnbench_main_process or _runs_nothing(config):
        return None
    try:
        path = config.getoption("--bnbench-report")
        if path is None:
            try:
                return claim_default("benchmark")
            except BnbenchError as e:
                raise BnbenchError(f"{e}; or pass --bnbench-report FILE in a writable folder") from None
        return ReportClaim(path, replace=config.getoption("--bnbench-force"), how_to_replace="pass --bnbench-force")
    except BnbenchError as e:
        raise pytest.UsageError(f"--bnbench-report: {e}") from None


def _claim_benchmark_json(config):
    """pytest-benchmark's ``--benchmark-json FILE``, claimed as bnbench's report is: an existing file
    is kept unless --bnbench-force, and two sessions never write one file. pytest-benchmark writes it."""
    path = config.getoption("benchmark_json", None)
    if path is None or not config._bnbench_main_process or _runs_nothing(config):
        return None
    if config._bnbench_claim is not None and Path(path).resolve() == config._bnbench_claim.path.resolve():
        config._bnbench_claim.release()
        raise pytest.UsageError(f"--benchmark-json and --bnbench-report name one file, {path}: give each its own")
    try:
        return ReportClaim(path, replace=config.getoption("--bnbench-force"), how_to_replace="pass --bnbench-force")
    except BnbenchError as e:
        if config._bnbench_claim is not None:
            config._bnbench_claim.release()
        raise pytest.UsageError(f"--benchmark-json: {e}") from None


def pytest_configure(config):
    _read_options(config)
    seeds = config.getoption("--seeds")
    side_counts = [config.getoption("--scaling-seeds") or 1, config.getoption("--sweep-configs") or 1]
    cpu_devices = config.getoption("--cpu-devices") or devices.cpu_devices_with_side_runs(seeds, side_counts)
    # Data-parallel runs need their devices whatever the cores (on a CPU: simulated devices).
    processes = config.getoption("--num-processes") or 1
    wanted = max([config.getoption("--data-parallel"), *scaling_devices(config)])
    cpu_devices = max(cpu_devices, -(-wanted // processes))
    try:
        devices.DataParallel(config.getoption("--data-parallel"), config.getoption("--batch-stats"))
        if cpu_devices > 1:
            devices.expose_cpu_devices(cpu_devices)  # before JAX starts its backends
        joined = distributed.initialize(config.getoption("--coordinator"), config.getoption("--num-processes"),
                                        config.getoption("--process-id"), config.getoption("--peer-timeout"))
    except BnbenchError as e:
        raise pytest.UsageError(str(e)) from None
    config._bnbench_main_process = not joined or distributed.is_main_process()
    config.addinivalue_line("markers", "bnbench: a bnbench benchmark")
    config._bnbench_claim = _claim_report(config)
    config._bnbench_json_claim = _claim_benchmark_json(config)
    config._bnbench_run_id = experiment.new_run_id()  # the same in both files this session writes


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """A peer lost mid-run, in a job of several processes: one line and an exit now, not a failed
    test and then JAX's exit barrier waiting for the peer until it gives up."""
    outcome = yield
    error = outcome.excinfo[1] if outcome.excinfo else None
    if error is not None and distributed.joined and distributed.lost_peer(error):
        distributed.stop_after(error)


def pytest_sessionstart(session):
    """In a job of several processes only process 0 writes: pytest-benchmark's JSON and saved runs too."""
    benchmarks = getattr(session.config, "_benchmarksession", None)
    if benchmarks is not None and not session.config._bnbench_main_process:
        benchmarks.json = benchmarks.save = benchmarks.autosave = None


@pytest.fixture(scope="session")
def bnbench_session(request):
    try:
        session = Session(request.config)
    except BnbenchError as e:
        if distributed.joined:  # the other processes hear of it in distributed.agree and stop too
            pytest.exit(f"bnbench: error: {distributed.post_failure(e)}", returncode=2)
        pytest.exit(f"bnbench: error: {e}", returncode=2)
    request.config._bnbench_session = session
    return session


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["bnbench"] = environment.environment()
    machine_info["bnbench_run_id"] = config._bnbench_run_id


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Strict JSON in pytest-benchmark's file too: it would write a diverged loss as a NaN literal,
    which JSON parsers (and bnbench's reader) refuse; null says "no value" to every reader. And the
    file goes where its claim says: beside the claimed path if something else wrote that meanwhile."""
    cleaned = finite(output_json)
    output_json.clear()
    output_json.update(cleaned)
    claim = getattr(config, "_bnbench_json_claim", None)
    if claim is not None and claim.target() != claim.path:
        config._benchmarksession.json = claim.moved_to  # pytest-benchmark writes it right after this hook


def _benchmark_json_moved(session) -> None:
    """pytest-benchmark's JSON sent beside its path (``pytest_benchmark_update_json``): said, exit 7."""
    claim = getattr(session.config, "_bnbench_json_claim", None)
    moved = claim.moved_line("pytest-benchmark's JSON") if claim is not None else None
    if moved is None:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(moved)
    if not session.exitstatus:
        session.exitstatus = EXIT_REPORT_MOVED


def pytest_sessionfinish(session, exitstatus):
    _benchmark_json_moved(session)  # pytest-benchmark wrote its JSON before this hook (its own wraps it)
    state = getattr(session.config, "_bnbench_session", None)
    if state is None or not state.main_process:
        return
    if not state.results:  # a report needs the accuracy benchmark's runs: say so, never nothing
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None and (state.summary_extras or state.scaling or state.peers):
            reporter.write_line("bnbench: no bnbench report written: the accuracy benchmark did not run in this "
                                "session, and a report is built from its runs; the figures of the benchmarks that "
                                "ran are in pytest-benchmark's JSON (--benchmark-json FILE)")
        return
    command = options.recorded_command("pytest", session.config.invocation_params.args)
    report = experiment.make_report(state.dataset, state.protocol, state.seeds, state.results, command=command,
                                    run_id=state.run_id, parallel=state.parallel,
                                    summary_extras=state.summary_extras, data_parallel_scaling=state.scaling,
                                    precision=state.precision, peers=state.peers)
    claim = session.config._bnbench_claim
    written = claim.write_json(report)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    status, line = divergence_news(report)
    if reporter is not None:
        reporter.write_line("")
        reporter.write_line(summary_table(report))
        reporter.write_line(claim.moved_line("this report") or f"bnbench report written to {written}")
        if line:
            reporter.write_line(line)
    if claim.moved_to is not None:
        status = EXIT_REPORT_MOVED
    if status and not session.exitstatus:
        session.exitstatus = status


def pytest_terminal_summary(terminalreporter, config):
    """With --peers, a peer that cannot run is one line here, whatever pytest's -r says of skips."""
    if not config.getoption("--peers", False):
        return
    for peer in peers.PEERS:
        reason = peers.missing(peer)
        if reason is not None:
            terminalreporter.write_line(f"bnbench: skipped {reason}")


def pytest_unconfigure(config):
    for claim in (getattr(config, "_bnbench_claim", None), getattr(config, "_bnbench_json_claim", None)):
        if claim is not None:
            claim.release()
