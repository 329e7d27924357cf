"""The bnbench command line: variants, run, sweep, merge, compare, report, profile."""

from __future__ import annotations

import argparse
import json
import sys

from bnbench import config, options
from bnbench.errors import BnbenchError
from bnbench.options import positive_float, positive_int


class Parser(argparse.ArgumentParser):
    """argparse, with its errors as bnbench's: one line and a pointer to --help, not the usage block."""

    def error(self, message: str):
        print(f"bnbench: error: {self.prog.removeprefix('bnbench ') + ': ' if ' ' in self.prog else ''}"
              f"{message} (see '{self.prog} --help')", file=sys.stderr)
        raise SystemExit(2)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bnbench")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def cmd_variants(args) -> int:
    from bnbench.models.variants import NOTEBOOK_VARIANTS, VARIANTS

    width = max(map(len, VARIANTS))
    for name, variant in VARIANTS.items():
        mark = "*" if name in NOTEBOOK_VARIANTS else " "
        print(f"{mark} {name.ljust(width)}  {variant.description}")
    print("\n* the Keras notebook's two models")
    return 0


def start_devices(args, run_counts) -> tuple:
    """The devices, before JAX starts its backends: on a CPU as many JAX devices as the runs (or
    ``--data-parallel``) want, then this process's place in a job of several, if it is one.
    Returns the data-parallel layout and whether this process writes (process 0)."""
    from bnbench.parallel import devices, distributed

    parallel = devices.DataParallel(args.data_parallel, args.batch_stats)
    processes = args.num_processes or distributed.cluster_processes()
    # In a job, each process's share of the runs decides its devices (the runs padded to fill them).
    cpu_devices = args.cpu_devices or (-(-parallel.devices // processes) if parallel.devices > 1
                                       else devices.cpu_devices_for([-(-n // processes) for n in run_counts]))
    if cpu_devices > 1:
        devices.expose_cpu_devices(cpu_devices)
    joined = distributed.initialize(args.coordinator, args.num_processes, args.process_id, args.peer_timeout)
    return parallel, not joined or distributed.is_main_process()


def claim_report(args, kind: str, main_process: bool, replace: bool = False):
    """The report's path, claimed before any training (``io.ReportClaim``): ``--out``, or a new
    ``reports/KIND-<time>.json`` without it; None with ``--no-save`` and on processes other than 0."""
    from bnbench.record.io import ReportClaim, claim_default

    if getattr(args, "no_save", False) and args.out is not None:
        raise BnbenchError("--no-save and --out together: drop --no-save to write the report, or --out to write none")
    if kind == "sweep" and args.resume and args.force:
        raise BnbenchError("--resume and --force together: --resume finishes the sweep at --out, --force starts it "
                           "anew; pass one")
    if not main_process or getattr(args, "no_save", False):
        return None
    if args.out is None:
        try:
            return claim_default(kind)
        except BnbenchError as e:
            raise BnbenchError(f"{e}; or pass --out FILE in a writable folder, or --no-save") from None
    how = "pass --force" + (" (or --resume to finish that sweep)" if kind == "sweep" else "")
    return ReportClaim(args.out, replace=args.force or replace, how_to_replace=how)


def finish(claim, report: dict) -> int:
    """Writes the final report where it was claimed, says where, and gives the exit status: a
    report moved aside (its path changed under the run), or every run diverged, is news."""
    from bnbench.errors import EXIT_REPORT_MOVED
    from bnbench.report.summary import divergence_news

    status = 0
    if claim is not None:
        written = claim.write_json(report)
        moved = claim.moved_line("this report")
        print(moved or f"report written to {written}", file=sys.stderr)
        status = EXIT_REPORT_MOVED if moved else 0
    else:
        print("report not saved (--no-save)", file=sys.stderr)
    diverged_status, line = divergence_news(report)
    if line:
        print(line, file=sys.stderr)
    return status or diverged_status


def cmd_run(args) -> int:
    from bnbench.models import variants

    parallel, main_process = start_devices(args, [args.seeds])

    chosen = [variants.get(name, precision=args.precision)
              for name in (args.variant or list(variants.NOTEBOOK_VARIANTS))]
    claim = claim_report(args, "run", main_process)
    try:
        return _run(args, chosen, parallel, main_process, claim)
    finally:
        if claim is not None:
            claim.release()


def _run(args, chosen, parallel, main_process: bool, claim) -> int:
    from tqdm import tqdm

    from bnbench.engine import train
    from bnbench.measure import experiment
    from bnbench.parallel import preflight
    from bnbench.report.summary import summary_table

    protocol = train.Protocol(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                              batch_order=options.single(options.BATCH_ORDER, args.batch_order, "bnbench run"),
                              optimizer=args.optimizer, momentum=args.momentum, weight_decay=args.weight_decay)
    dataset, device_data = _load_data(args, chosen, quiet=not main_process)
    seeds = list(range(args.seed, args.seed + args.seeds))
    preflight.ready_to_train(parallel, [protocol.batch_size], len(seeds), dataset, args.argv, variants=chosen,
                             batch_orders=[protocol.batch_order])
    results = {}
    for variant in chosen:
        with tqdm(total=protocol.epochs, desc=f"{variant.name} ({len(seeds)} seed{'s' * (len(seeds) > 1)})",
                  unit="epoch", file=sys.stderr, disable=args.quiet or not main_process) as bar:
            def on_epoch(i, metrics, seconds):
                bar.set_postfix(loss=f"{metrics['train_loss'].mean():.4f}",
                                acc=f"{metrics['train_accuracy'].mean():.4f}",
                                val_acc=f"{metrics['val_accuracy'].mean():.4f}", epoch_s=f"{seconds:.2f}")
                bar.update()

            results[variant.name] = experiment.run_variant(
                variant, protocol, device_data, seeds, measure_floor=args.floor, unroll=args.unroll,
                target=args.target, on_epoch=on_epoch, parallel=parallel)
    if not main_process:
        return 0
    command = options.recorded_command("bnbench", args.argv)
    report = experiment.make_report(dataset, protocol, seeds, results, command=command, parallel=parallel,
                                    precision=args.precision)
    print(summary_table(report))
    return finish(claim, report)


def _load_data(args, chosen, quiet: bool = False):
    """The dataset, checked against every chosen variant before any training, and on the device."""
    from bnbench.data import sources as data_lib
    from bnbench.engine import train

    dataset = data_lib.load(args.dataset, args.data_dir, download_url=args.download_url)
    for variant in chosen:  # a model that cannot be built for these images stops here, before any training
        variant.check(dataset.train_images.shape[1:], dataset.num_classes)
    if not quiet:
        print(f"{dataset.name} from {dataset.location} ({dataset.source}, {dataset.order} order): "
              f"{len(dataset.train_labels)} train, {len(dataset.val_labels)} validation, "
              f"{len(dataset.test_labels)} test", file=sys.stderr)
    return dataset, train.DeviceData.from_dataset(dataset)


def cmd_sweep(args) -> int:
    from bnbench.measure import sweep
    from bnbench.models import variants

    grid = sweep.Grid(
        variants=tuple(args.variant or variants.NOTEBOOK_VARIANTS),
        learning_rates=tuple(options.number_list(args.learning_rate, "--learning-rate")),
        batch_sizes=tuple(options.number_list(args.batch_size, "--batch-size", int)),
        bn_momenta=tuple(options.number_list(args.bn_momentum, "--bn-momentum")) if args.bn_momentum else (),
        epochs=args.epochs, seeds=tuple(range(args.seed, args.seed + args.seeds)), budget=args.budget,
        lr_scaling=args.lr_scaling, reference_batch_size=args.reference_batch_size, eval_every=args.eval_every,
        target=args.target, slice=args.slice, batch_orders=args.batch_order,
        ghost_batches=tuple(options.number_list(args.ghost_batch, "--ghost-batch", int)) if args.ghost_batch else (),
        optimizer=args.optimizer,
        momenta=tuple(options.values(options.MOMENTUM, args.momentum)) if args.momentum is not None else (),
        weight_decays=tuple(options.values(options.WEIGHT_DECAY, args.weight_decay))
        if args.weight_decay is not None else (), precision=args.precision)
    grid.check()  # now, and the batch sizes against the training set once the data is loaded
    chosen = [variants.get(name, precision=grid.precision) for name in grid.variants]
    runs_per_program = (len(grid.learning_rates) * max(1, len(grid.bn_momenta)) * len(grid.optimizer_momenta())
                        * len(grid.optimizer_weight_decays()) * len(grid.seeds))
    parallel, main_process = start_devices(args, [runs_per_program, len(grid.seeds) * len(grid.learning_rates)])
    claim = claim_report(args, "sweep", main_process, replace=args.resume)
    try:
        return _sweep(args, grid, chosen, parallel, main_process, claim, runs_per_program)
    finally:
        if claim is not None:
            claim.release()


def _sweep(args, grid, chosen, parallel, main_process: bool, claim, runs_per_program: int) -> int:
    from bnbench.measure import sweep
    from bnbench.parallel import distributed, preflight
    from bnbench.report import reading

    previous = None
    if claim is not None and args.resume and claim.path.exists():  # resuming what never started starts it
        previous = reading.read_valid(claim.path)
    dataset, device_data = _load_data(args, chosen, quiet=not main_process)
    grid.check(train_examples=len(dataset.train_labels))
    if previous is not None:
        sweep.check_resumable(previous, dataset, grid, parallel)
    sweep.programs(grid, chosen, len(dataset.train_labels), parallel.devices)  # a grid a variant cannot take fails now
    preflight.ready_to_train(parallel, grid.batch_sizes, runs_per_program, dataset, args.argv,
                             batch_orders=grid.batch_orders)
    done = None
    if args.resume:  # process 0 read the report; every process must skip what it holds
        done = json.loads(distributed.share_from_main("resume", json.dumps(sorted(previous["summary"])
                                                                           if previous else [])))

    def on_program(program, i, total):
        if not args.quiet and main_process:
            print(f"[{i + 1}/{total}] {program.variant.name}, batch {program.protocol.batch_size}"
                  f"{program.axes()}: "
                  f"{len(program.configs)} configuration{'s' * (len(program.configs) > 1)} x "
                  f"{len(grid.seeds)} seed{'s' * (len(grid.seeds) > 1)}, {program.protocol.epochs} epochs",
                  file=sys.stderr)

    def write(report):  # after each program: an interrupted sweep keeps what finished
        if claim is not None:
            claim.write_json(report)

    from bnbench.report.summary import summary_table

    report = sweep.run_sweep(grid, chosen, dataset, device_data, write, previous=previous,
                             command=options.recorded_command("bnbench", args.argv), on_program=on_program,
                             parallel=parallel, done=done)
    if not main_process:
        return 0
    print(summary_table(report))
    return finish(claim, report)


def cmd_profile(args) -> int:
    from bnbench.engine import train
    from bnbench.measure import profile
    from bnbench.models import variants

    chosen = [variants.get(name) for name in (args.variant or list(variants.NOTEBOOK_VARIANTS))]
    _, device_data = _load_data(args, chosen)
    protocol = train.Protocol(batch_size=args.batch_size, learning_rate=args.learning_rate)
    examples = int(device_data.train_labels.shape[0])
    if args.batch_size > examples:
        raise BnbenchError(f"--batch-size {args.batch_size}: the training split holds {examples} examples; "
                           f"choose at most {examples}")
    for variant in chosen:  # a ghost batch must divide the batch, as in run and sweep
        variant.check_batches(args.batch_size, examples)
    available = examples // args.batch_size
    if args.steps > available:
        raise BnbenchError(f"--steps {args.steps}: the training split holds {available} batches of "
                           f"{args.batch_size}; choose at most {available}")
    profiles = []
    for variant in chosen:
        profiles.append(profile.profile_epoch(variant, device_data, protocol, steps=args.steps))
        print(profile.table(profiles[-1], top=args.top), end="\n\n")
    if len(profiles) > 1:
        print(profile.side_by_side(profiles))
    return 0


def cmd_merge(args) -> int:
    from bnbench.measure.merge import merge
    from bnbench.record.io import ReportClaim
    from bnbench.report import reading

    claim = ReportClaim(args.out, replace=args.force, how_to_replace="pass --force")
    try:
        report = merge([(path, reading.read_valid(path)) for path in args.reports],
                       command=options.recorded_command("bnbench", args.argv))
        for notice in report.get("notices", []):
            print(f"bnbench: notice: {notice}", file=sys.stderr)
        written = claim.write_json(report)
    finally:
        claim.release()
    print(f"{len(report['runs'])} runs of {len(args.reports)} reports merged into {written}", file=sys.stderr)
    return 0


def cmd_compare(args) -> int:
    from bnbench.report.compare import compare

    if args.fail_on_regression is None and (args.gate is not None or args.across_machines):
        raise BnbenchError(f"{'--gate' if args.gate is not None else '--across-machines'} says how to gate: add "
                           "--fail-on-regression PCT to gate")

    text, regressed = compare(args.reports, markdown=args.format == "markdown",
                              fail_on_regression=args.fail_on_regression, baselines=args.baseline or (),
                              gate_what=args.gate or "auto", across_machines=args.across_machines,
                              margin=args.margin)
    print(text)
    return 1 if regressed else 0


def cmd_report(args) -> int:
    from bnbench.report.page import write_citable

    formats = list(dict.fromkeys(f for given in args.format or [["markdown"]] for f in given))
    for path in write_citable(args.reports, args.out, baselines=args.baseline or (), force=args.force,
                              margin=args.margin, formats=formats):
        print(path)
    return 0


def _report_formats(text: str) -> list[str]:
    """``--format latex,csv``: the formats named, each one ``bnbench report`` writes."""
    from bnbench.report.tables import FORMATS

    items = [item.strip() for item in text.split(",")]
    for item in items:
        if not item:
            raise options.BadValue(f"{text!r} has an empty item: name formats separated by commas, as in latex,csv")
        if item not in FORMATS:
            raise options.BadValue(f"{item!r} is not a format: choose from {', '.join(FORMATS)} (repeat --format "
                                   "or separate them with commas, as in --format latex,csv)")
    return items


def add_scale_out_options(parser) -> None:
    """Data-parallel training and several processes: the same options for run, sweep and the harness."""
    options.add_to_argparse(parser.add_argument_group("data-parallel training and several processes"),
                            options.SCALE_OUT)


class _Once(argparse.Action):
    """A sweep's list option, given once: a second --learning-rate would silently replace the first."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, f"_{self.dest}_given", False):
            parser.error(f"{option_string} given twice: give its values once, separated by commas, as in "
                         f"{option_string} {self.metavar.replace('...', '').strip(',') if self.metavar else ''}")
        setattr(namespace, f"_{self.dest}_given", True)
        setattr(namespace, self.dest, values)


def _margin(text: str) -> float:
    value = positive_float(text)
    if value >= 1:
        raise options.BadValue(f"{text!r} must be an accuracy difference below 1, as 0.005")
    return value


MARGIN_HELP = ("the accuracy difference within which two variants count as equivalent (two one-sided tests, "
               "each at 2.5%% after Holm's adjustment over the family; default 0.005)")
BASELINE_HELP = ("also set every variant of each report against this variant of the same report, seed by seed: "
                 "paired difference with its 95%% CI, p-value, Holm-adjusted p-value and verdict (repeatable). "
                 "A name meets each variant with the same fields changed where the report trained that "
                 "(plain_relu against seed_bn:depth=8,width=256 is plain_relu:depth=8,width=256); FIELD=VALUE "
                 "sets each variant against itself with that model field's value (precision=float32) or, in "
                 "a sweep, at that swept number and the same configuration otherwise (weight_decay=0)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="bnbench", description=__doc__)
    parser.add_argument("--version", action="version", version=f"bnbench {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.commands = sub.choices

    sub.add_parser("variants", help="list the model variants").set_defaults(func=cmd_variants)

    run = sub.add_parser("run", help="train variants and write a JSON report")
    run.add_argument("--variant", action="append", metavar="NAME",
                     help="a variant to train (repeatable; default: seed_plain and seed_bn); NAME:FIELD=VALUE,... "
                          "changes fields of its model, as in group_norm:groups=2")
    options.add_to_argparse(run, options.RUN)
    run.add_argument("--seed", type=int, default=0, help="first seed; seeds are SEED, SEED+1, ... (default 0)")
    run.add_argument("--batch-size", type=positive_int, default=32, help="batch size (default 32)")
    run.add_argument("--learning-rate", type=positive_float, default=1e-3, help="learning rate (default 1e-3)")
    run.add_argument("--out", metavar="FILE.json",
                     help="where to write the JSON report (default: reports/run-<date>-<time>.json); an existing "
                          "file is kept unless --force")
    run.add_argument("--force", action="store_true", help="replace the report at --out if it exists")
    run.add_argument("--no-save", action="store_true", help="print the summary only; write no report")
    run.add_argument("--floor", action="store_true",
                     help="also time each variant's matmul floor after every epoch and report the ratio")
    add_scale_out_options(run)
    run.add_argument("--unroll", type=positive_int, default=None, help=argparse.SUPPRESS)
    run.set_defaults(func=cmd_run)

    sweep = sub.add_parser("sweep", help="train variants over a grid of learning rates, batch sizes and BN momenta")
    sweep.add_argument("--variant", action="append", metavar="NAME",
                       help="a variant to sweep (repeatable; default: seed_plain and seed_bn), NAME:FIELD=VALUE,...")
    sweep.add_argument("--learning-rate", default="1e-3", metavar="LR,LR,...", action=_Once,
                       help="learning rates, comma-separated (default 1e-3); trained together in one program")
    sweep.add_argument("--batch-size", default="32", metavar="B,B,...", action=_Once,
                       help="batch sizes, comma-separated (default 32); one program each")
    sweep.add_argument("--bn-momentum", default=None, metavar="M,M,...", action=_Once,
                       help="momenta of BatchNorm's moving statistics, comma-separated, trained together in one "
                            "program (default: each variant's own, Keras' 0.99 unless its bn_momentum field says "
                            "otherwise)")
    sweep.add_argument("--budget", choices=("epochs", "updates"), default="epochs",
                       help="what a batch-size sweep holds fixed: the epochs (default), or the updates of --epochs "
                            "at --reference-batch-size (to the nearest whole epoch)")
    sweep.add_argument("--lr-scaling", choices=("none", "linear"), default="none",
                       help="linear: each learning rate is for --reference-batch-size and scales with the batch "
                            "size (Goyal et al., 2017); none (default): the same rate at every batch size")
    sweep.add_argument("--reference-batch-size", type=positive_int, default=32, metavar="B",
                       help="the batch size the learning rates and the updates budget refer to (default 32)")
    sweep.add_argument("--ghost-batch", default=None, metavar="G,G,...", action=_Once,
                       help="BatchNorm's and Batch Renorm's statistics over consecutive groups of G examples of "
                            "each batch (the variant's ghost_batch field), comma-separated, one program each; "
                            "variants without batch statistics are trained once, as controls (default: each "
                            "variant's own, the whole batch)")
    sweep.add_argument("--eval-every", type=positive_int, default=None, metavar="N",
                       help="also evaluate validation accuracy every N updates of each epoch, inside the compiled "
                            "epoch, for time and updates to the target at that grain (default: each epoch's end)")
    options.add_to_argparse(sweep, options.SWEEP)
    sweep.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    sweep.add_argument("--out", required=True, metavar="FILE.json",
                       help="the report, rewritten as each program finishes")
    sweep.add_argument("--resume", action="store_true",
                       help="finish the sweep whose report is at --out: run only what it lacks (same arguments)")
    sweep.add_argument("--force", action="store_true", help="replace the report at --out and start the sweep anew")
    add_scale_out_options(sweep)
    sweep.set_defaults(func=cmd_sweep)

    prof = sub.add_parser("profile", help="where a training epoch's time goes: XLA's trace of a compiled epoch, "
                                          "per part of the step (products, patches, pooling, normalization, ...)")
    prof.add_argument("--variant", action="append", metavar="NAME",
                      help="a variant to profile (repeatable; default: seed_plain and seed_bn), NAME:FIELD=VALUE,...")
    prof.add_argument("--steps", type=positive_int, default=300, help="updates in the traced epoch (default 300)")
    prof.add_argument("--batch-size", type=positive_int, default=32, help="batch size (default 32)")
    prof.add_argument("--learning-rate", type=positive_float, default=1e-3, help="learning rate (default 1e-3)")
    prof.add_argument("--top", type=positive_int, default=12, help="kernels listed after the parts (default 12)")
    options.add_to_argparse(prof, options.DATA)
    prof.set_defaults(func=cmd_profile)

    merge = sub.add_parser("merge", help="join reports of disjoint runs of one sweep (or run) into one report")
    merge.add_argument("reports", nargs="+", metavar="REPORT.json",
                       help="sweep reports of one grid (slices, or other seeds), or run reports of one protocol, "
                            "made by the same bnbench; no run may be in two of them")
    merge.add_argument("--out", required=True, metavar="FILE.json",
                       help="the merged report; summaries recomputed from the runs (an existing file is kept "
                            "unless --force)")
    merge.add_argument("--force", action="store_true", help="replace the report at --out if it exists")
    merge.set_defaults(func=cmd_merge)

    compare = sub.add_parser("compare", help="put reports side by side")
    compare.add_argument("reports", nargs="+", metavar="REPORT.json",
                         help="bnbench reports or pytest-benchmark JSON files; the first is the baseline")
    compare.add_argument("--format", choices=("text", "markdown"), default="text",
                         help="plain-text tables (default) or Markdown, for a pull request or a page")
    compare.add_argument("--fail-on-regression", type=positive_float, metavar="PCT",
                         help="exit 1 if a time got slower by more than PCT%% beyond the noise (compared only with "
                              "the same kind of time), an accuracy fell below the baseline's 95%% CI, or a figure "
                              "of the baseline that --gate asks for could not be compared (missing from a later "
                              "report, say); each figure not gated is named, with why")
    compare.add_argument("--gate", choices=config.GATES, default=None,
                         help="what --fail-on-regression holds the later reports to: auto (default) the times, and "
                              "the accuracies where the baseline has an interval (2 or more seeds), naming what it "
                              "cannot test (an accuracy of one seed, a time measured once) and passing over it; "
                              "time; accuracy; all (then what cannot be tested fails the gate)")
    compare.add_argument("--across-machines", action="store_true",
                         help="gate the times of reports that ran on another machine (CPU model, flags or device) "
                              "than the baseline; without it such a gate fails, since the ratio compares hardware, "
                              "not code (--gate accuracy compares across machines without it)")
    compare.add_argument("--baseline", action="append", metavar="VARIANT|FIELD=VALUE", help=BASELINE_HELP)
    compare.add_argument("--margin", type=_margin, default=0.005, metavar="ACC", help=MARGIN_HELP)
    compare.set_defaults(func=cmd_compare)

    report = sub.add_parser("report", help="write a citable Markdown summary with plots, and tables for papers")
    report.add_argument("reports", nargs="+", metavar="REPORT.json",
                        help="bnbench reports (run, sweep or harness) and pytest-benchmark JSON files to summarize")
    report.add_argument("--out", required=True, metavar="DIR",
                        help="folder for README.md and the plots; only files bnbench report wrote there before are "
                             "replaced (each whole) and its old plots removed; other files are left as they are")
    report.add_argument("--force", action="store_true",
                        help="also replace files of the page's names that bnbench report did not write (a README.md)")
    report.add_argument("--baseline", action="append", metavar="VARIANT|FIELD=VALUE", help=BASELINE_HELP)
    report.add_argument("--margin", type=_margin, default=0.005, metavar="ACC", help=MARGIN_HELP)
    report.add_argument("--format", action="append", type=_report_formats, metavar="FORMAT[,FORMAT...]",
                        help="also write tables for papers (repeatable, or comma-separated): markdown, the page "
                             "(README.md, always written; the default); latex, tables.tex (one booktabs table per "
                             "report, to \\input{}, with --baseline's paired differences and verdicts); csv, runs.csv "
                             "(one row per run) and summary.csv (one row per variant of each report). Each table "
                             "names its report's command, commit, machine, seeds and citation key.")
    report.set_defaults(func=cmd_report)
    return parser


GRID_OPTIONS = ("--learning-rate", "--batch-size", "--bn-momentum", "--ghost-batch", "--momentum", "--weight-decay")


def _negative_values_attached(argv: list[str]) -> list[str]:
    """``--learning-rate -1e-3`` as ``--learning-rate=-1e-3``: argparse takes a value that starts with
    a dash and is not a plain decimal for an option, and would answer with its usage instead of
    saying what is wrong with the value."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] in GRID_OPTIONS and i + 1 < len(argv) and argv[i + 1].startswith("-") and \
                argv[i + 1][1:2].replace(".", "").isdigit():
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, unknown = parser.parse_known_args(_negative_values_attached(argv))
        if unknown:  # after the command: named by the command's own parser, whose --help it points to
            after = argv.index(args.command) < argv.index(unknown[0]) if unknown[0] in argv else True
            (parser.commands[args.command] if after else parser).error(
                f"unrecognized arguments: {' '.join(unknown)}")
    except SystemExit as e:  # --help, --version, or Parser.error's one line
        return e.code if isinstance(e.code, int) else 2
    args.argv = argv  # what the command was given: the report records it, the processes of a job compare it
    if getattr(args, "unroll", 0) is None:
        from bnbench.measure.experiment import DEFAULT_UNROLL
        args.unroll = DEFAULT_UNROLL
    try:
        return args.func(args)
    except BaseException as e:  # noqa: BLE001 - each kind is answered below, the rest re-raised
        from bnbench.parallel import distributed

        if distributed.joined and not isinstance(e, SystemExit):
            distributed.stop_after(e)  # one line, and no exit barrier that a lost peer would hang
        if isinstance(e, BnbenchError):
            print(f"bnbench: error: {e}", file=sys.stderr)
            return 2
        if isinstance(e, KeyboardInterrupt):
            print("bnbench: interrupted; reports written before this point are intact", file=sys.stderr)
            return 130
        if isinstance(e, BrokenPipeError):  # `bnbench variants | head`: the reader left; nothing is wrong
            sys.stderr.close()
            return 0
        raise


if __name__ == "__main__":
    sys.exit(main())
