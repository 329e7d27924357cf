"""bnbench's report model, declared once: the run report, the sweep report, and the parts of
pytest-benchmark's JSON that bnbench reads.

The writers build these types (``measure.experiment.make_report``, ``measure.sweep.make_sweep_report``),
``record.schema.check`` checks a loaded file into them, the readers use their attributes, and the
JSON Schema documents under docs/schema/ are generated from them (``python -m bnbench.record.schema``).

Pydantic models, strict (no coercion: ``"0.5"`` is not a number, ``true`` not a count), that keep
unknown fields (``extra="allow"``: objects allow additional properties, where future fields will
appear). A field that may be absent defaults to None without allowing null (``Count = None``): absent
and null stay distinct, and ``dump`` writes back only the fields a report holds. Descriptions are
what an error message says was expected at a field (``record.schema.describe``).
Field order is the order the writers write in.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr

SCHEMA_VERSION = 1
REPORT_KIND = "bnbench.run"
SWEEP_KIND = "bnbench.sweep"
# What must be equal for two reports' accuracies and times to mean the same thing. The one place
# these are defined: every protocol must hold them, `compare` refuses reports that differ in them
# and `report` groups reports by them.
PROTOCOL_KEYS = ("dataset", "order", "train_examples", "validation_examples", "test_examples", "batch_size",
                 "optimizer", "learning_rate", "momentum", "weight_decay", "precision", "epochs", "seeds")
# What reports written before a key existed had (absent there, the same as this value).
PROTOCOL_DEFAULTS = {"weight_decay": 0.0, "precision": "float32"}


def protocol_value(protocol: dict, key: str):
    """A protocol's ``key``, with PROTOCOL_DEFAULTS standing for keys older reports lack."""
    return protocol.get(key, PROTOCOL_DEFAULTS.get(key))


def _unique(items: list) -> list:
    if len(set(items)) != len(items):
        raise ValueError("repeated items")
    return items


String = Annotated[str, Field(description="a string")]
Number = Annotated[float, Field(description="a number")]
Whole = Annotated[int, Field(description="a whole number")]
# Times are bounded by what a clock can measure and a run can last, so that every ratio, sum and
# plot of them stays finite (a time of 1e-320 s or 1e308 s is damage, not a measurement).
Time = Annotated[float, Field(ge=1e-9, le=1e9, description="a time in seconds from 1e-09 to 1e+09")]
Count = Annotated[int, Field(ge=1, description="a whole number >= 1")]
Size = Annotated[int, Field(ge=0, description="a whole number >= 0")]
Fraction = Annotated[float, Field(ge=0, le=1, description="an accuracy between 0 and 1")]
Positive = Annotated[float, Field(gt=0, description="a number > 0")]
NonNegative = Annotated[float, Field(ge=0, description="a number >= 0")]
Momentum = Annotated[float, Field(ge=0, lt=1, description="a number from 0 to below 1")]
IQR = Annotated[float, Field(ge=0, le=1e9, description="a spread in seconds from 0 to 1e+09")]
BatchStats = Annotated[Literal["sync", "local"], Field(description="sync or local")]
BatchOrder = Annotated[str, Field(pattern="^(iid|classes:[1-9][0-9]*)$", description="iid or classes:K")]
Precision = Annotated[Literal["float32", "bfloat16", "bfloat16-statistics"],
                      Field(description="float32, bfloat16 or bfloat16-statistics")]
RunId = Annotated[str, Field(pattern="^[0-9a-f]{32}$", description="a run id (32 hex digits)")]
Seeds = Annotated[list[Whole], Field(min_length=1, description="a list of seeds (whole numbers)",
                                     json_schema_extra={"uniqueItems": True}), AfterValidator(_unique)]


def _nullable(text: str, default: Any = ...) -> Any:
    """A field that may hold null; required unless ``default`` is given."""
    return Field(default, description=f"{text} or null")


# A loss is null where training diverged: its NaN is written as null (every number written is finite).
def _loss() -> Any:
    return _nullable("a number", None)


class Record(BaseModel):
    """An object of a report."""

    model_config = ConfigDict(strict=True, extra="allow")

    def dump(self) -> dict:
        """As the report's JSON holds it: the fields it was given (absent stays absent), and the
        unknown ones after the declared."""
        return self.model_dump(exclude_unset=True)


class Spread(Record):
    """a spread of times {median, iqr, min, max, n} in seconds"""

    median: Time
    iqr: IQR
    min: Number = None
    max: Number = None
    n: Count


class Accuracy(Record):
    """an accuracy over seeds {mean, std, ci95, n}"""

    mean: Fraction
    std: NonNegative | None = _nullable("a number >= 0")
    # null with one seed: an interval needs two or more.
    ci95: Annotated[list[Number], Field(min_length=2, max_length=2)] | None = Field(
        description="a 95% interval [low, high] or null")
    n: Count


class Loss(Record):
    """a loss over seeds {mean, std, ci95, n}"""

    mean: float | None = _loss()
    std: float | None = _loss()
    ci95: list[float | None] | None = Field(None, description="a 95% interval [low, high] or null")
    n: Count = None


class Environment(Record):
    """the environment {backend, device_kind, device_count, cpu_model, ...}"""

    python: str | None = _nullable("a string", None)
    jax: str | None = _nullable("a string", None)
    jaxlib: str | None = _nullable("a string", None)
    flax: str | None = _nullable("a string", None)
    optax: str | None = _nullable("a string", None)
    bnbench: str | None = _nullable("a string", None)
    backend: String
    device_kind: String = None
    device_count: Count = None
    process_count: Count = None
    platform: str | None = _nullable("a string", None)
    cpu_model: str | None = _nullable("a string", None)
    cpu_flags: list[String] = Field(None, description="a list of strings")
    usable_cores: Count | None = _nullable("a whole number >= 1", None)
    cpu_count: Count | None = _nullable("a whole number >= 1", None)
    xla_flags: str | None = _nullable("a string", None)
    matmul_precision: str | None = _nullable("a string", None)
    compilation_cache_dir: str | None = _nullable("a string", None)
    git_commit: str | None = _nullable("a string", None)


class SharedProtocol(Record):
    """the protocol {dataset, order, seeds, ...} every configuration of a sweep shares"""

    dataset: String
    source: Literal["idx", "download", "tfds", "synthetic"] = Field(
        None, description="one of idx, download, tfds, synthetic")
    order: String
    location: str | None = _nullable("a string", None)
    verified: bool = Field(None, description="true or false")
    train_examples: Count
    validation_examples: Size
    test_examples: Size
    image_shape: Annotated[list[Count], Field(min_length=2, max_length=3)] = Field(
        None, description="an image shape [height, width] or [height, width, channels]")
    # A run's own (Protocol); a sweep's configurations each have theirs (Config).
    batch_size: Count = None
    optimizer: String
    learning_rate: Positive = None
    # The optimizer's (SGD's, Adam's b1); a sweep over several has none here, each config its own.
    momentum: NonNegative = None
    # Absent in reports from before --weight-decay and --precision: 0 and float32 (PROTOCOL_DEFAULTS).
    weight_decay: NonNegative = None
    precision: Precision = None
    epochs: Count = None
    updates_per_epoch: Count = None
    seeds: Seeds
    # Absent in reports from before data-parallel training: one device, sync.
    data_parallel: Count = Field(None, description="the devices each batch was split over (a whole number >= 1)")
    batch_stats: BatchStats = None
    # Absent in reports from before non-i.i.d. batches (iid), and in a sweep that varies it (each
    # run's config holds its own).
    batch_order: BatchOrder = None


class Protocol(SharedProtocol):
    """the protocol {dataset, order, batch_size, learning_rate, epochs, seeds, ...}"""

    batch_size: Count
    learning_rate: Positive
    momentum: NonNegative
    epochs: Count
    updates_per_epoch: Count


class Config(Record):
    """a sweep's configuration {learning_rate, batch_size, bn_momentum, epochs, ...}"""

    learning_rate: Positive
    base_learning_rate: Positive
    batch_size: Count
    bn_momentum: Momentum
    # The optimizer's momentum and weight decay (absent in sweeps from before they were swept).
    momentum: Momentum = None
    weight_decay: NonNegative = None
    epochs: Count
    updates_per_epoch: Count
    # Where the sweep varies them (--ghost-batch, several --batch-order).
    ghost_batch: Count = None
    batch_order: BatchOrder = None


class Epoch(Record):
    """an epoch's record {epoch, train_accuracy, val_accuracy, time_s, ...}"""

    # A diverged run's records from its diverging epoch on hold only the times (schema._check_epochs).
    epoch: Count
    train_loss: float | None = _loss()
    train_accuracy: Fraction = None
    # The training subset's loss and accuracy as evaluation measures them (train.TRAIN_EVAL_EXAMPLES).
    train_eval_loss: float | None = _loss()
    train_eval_accuracy: Fraction = None
    val_loss: float | None = _loss()
    val_accuracy: Fraction = None
    time_s: Time
    floor_time_s: Time | None = _nullable("a time in seconds from 1e-09 to 1e+09", None)


class Eval(Record):
    """an evaluation {update, val_accuracy, val_loss}"""

    update: Count
    val_loss: float | None = _loss()
    val_accuracy: Fraction


class Diverged(Record):
    """where the loss first became NaN or infinite {epoch, update}"""

    epoch: Count
    update: Count


class Run(Record):
    """a run {variant, seed, epochs, test_accuracy or diverged, ...}"""

    variant: String
    seed: Whole
    config: Config = None
    epochs: list[Epoch] = Field(min_length=1, description="a list of epoch records")
    evals: list[Eval] = Field(None, description="a list of evaluations {update, val_accuracy}")
    diverged: Diverged = None
    test_loss: float | None = _loss()
    test_accuracy: Fraction = None
    compile_time_s: NonNegative = None


class SweepRun(Run):
    """a run of a sweep {variant, seed, config, epochs, ...}"""

    config: Config


class Reached(Record):
    """{epoch, time_s, updates} or null"""

    epoch: Count
    time_s: Time
    updates: Count


class TimeToTarget(Record):
    """{target_val_accuracy, per_seed} or null"""

    target_val_accuracy: Fraction
    per_seed: list[Reached | None] = Field(description="a list with one entry per seed")
    seeds_reached: Size = None


class Floor(Record):
    """the matmul floor {median_ratio, ...} or null"""

    # Absent, or a null median_ratio with `unavailable` saying why, where the floor cannot be timed.
    matmul_flops_per_epoch: int | float | None = _nullable("a number", None)  # written as counted: a whole number
    median_floor_time_s: Time | None = _nullable("a time in seconds from 1e-09 to 1e+09", None)
    median_ratio: Positive | None = _nullable("a number > 0", None)
    epochs_timed: list[Count] = Field(None, description="a list of epochs")
    unavailable: String = None


class ScalingPoint(Record):
    """a data-parallel scaling point {variant, devices, batch_stats, epoch_s, examples_per_s, ...}"""

    variant: String
    devices: Count
    batch_stats: BatchStats
    norm: str | None = _nullable("a string", None)
    batch_size: Count = None
    epoch_s: Spread
    update_s: Time
    examples_per_s: Positive


class PeerComparison(Record):
    """a comparison with a peer framework {variant, peer, peer_version, peer_step_s, bnbench_step_s, ratio, ...}"""

    variant: String
    peer: String  # pytorch or keras (measure.peers.PEERS)
    peer_version: String
    steps: Count  # updates per timed round
    rounds: Count = None
    batch_size: Count = None
    peer_step_s: Spread  # per update, over the rounds
    bnbench_step_s: Spread
    ratio: Positive  # the median over rounds of the peer's round over bnbench's: above 1, bnbench is faster
    ratios: list[Number] = Field(None, description="a list of numbers")
    # How bnbench's round ran: "compiled loop" (its step scanned over the round's batches, synchronised
    # once); absent in reports before it: as many lone steps, each synchronised.
    bnbench_round: String = None


class SeedScaling(Record):
    """seed scaling {seeds, ratio, ...}"""

    seeds: Count
    seed_devices: Count = None
    one_seed_epoch_s: Spread = None
    seeds_epoch_s: Spread = None
    ratio: Positive
    ratios: list[Number] = Field(None, description="a list of numbers")


class ModelInfo(Record):
    """the model {family, ...its fields}"""

    family: String
    norm: str | None = _nullable("a normalization's name", None)


class VariantSummary(Record):
    """a variant's summary {seeds, train_accuracy, val_accuracy, test_accuracy, epoch_time_s, updates_per_epoch, ...}"""

    variant: String = None  # a sweep's entries: the variant and the configuration
    config: Config = None
    seeds: Count
    # null where every seed diverged
    train_loss: Loss | None = _nullable("a loss over seeds {mean, std, ci95, n}", None)
    train_accuracy: Accuracy | None = _nullable("an accuracy over seeds {mean, std, ci95, n}")
    train_eval_loss: Loss | None = _nullable("a loss over seeds {mean, std, ci95, n}", None)
    train_eval_accuracy: Accuracy | None = _nullable("an accuracy over seeds {mean, std, ci95, n}", None)
    val_loss: Loss | None = _nullable("a loss over seeds {mean, std, ci95, n}", None)
    val_accuracy: Accuracy | None = _nullable("an accuracy over seeds {mean, std, ci95, n}")
    test_loss: Loss | None = _nullable("a loss over seeds {mean, std, ci95, n}", None)
    test_accuracy: Accuracy | None = _nullable("an accuracy over seeds {mean, std, ci95, n}")
    diverged_seeds: Size = None
    epoch_time_s: Spread
    median_epoch_time_s: Time = None
    median_update_time_s: Time = None
    updates_per_epoch: Count
    compile_time_s: NonNegative = None
    time_to_target: TimeToTarget | None = None
    description: String = None
    model: ModelInfo = None
    seed_devices: Count = None
    data_devices: Count = None
    runs_together: Count = None  # the runs trained together (their epochs share the time)
    floor: Floor | None = None
    # From the harness: a lone compiled update's time, its figures, and seed scaling (opt-in).
    step_time_s: Spread = None
    step: dict[str, Any] = Field(None, description="an object")
    seed_scaling: SeedScaling = None


class SweepSummary(VariantSummary):
    """a sweep's summary of one variant and configuration {variant, config, seeds, ...}"""

    variant: String
    config: Config


class MergedFrom(Record):
    """a report that `bnbench merge` joined {name, run_id, created, command, runs}"""

    name: String
    run_id: RunId | None = _nullable("a run id (32 hex digits)", None)
    created: str | None = _nullable("a string", None)
    command: str | None = _nullable("a string", None)
    runs: Size


class Envelope(Record):
    """What every bnbench report starts with: what it is, which run, and where and how it ran."""

    schema_version: int = Field(ge=1, le=SCHEMA_VERSION,
                                description=f"a schema version from 1 to {SCHEMA_VERSION}")
    kind: String
    run_id: RunId = None
    created: str | None = _nullable("a string", None)
    command: str | None = _nullable("a string", None)
    environment: Environment
    protocol: SharedProtocol
    # Only in a report of `bnbench merge`: the reports it joined, and what a reader should know.
    merged_from: list[MergedFrom] = Field(None, description="a list of the reports merged")
    notices: list[String] = Field(None, description="a list of notices")


class RunReport(Envelope):
    """bnbench's report, from `bnbench run` and `pytest benchmarks/`"""

    kind: Literal["bnbench.run"] = Field(description=REPORT_KIND)
    protocol: Protocol
    runs: list[Run] = Field(description="a list of runs")
    summary: dict[str, VariantSummary] = Field(min_length=1, description="an object of variant summaries, one or more")
    data_parallel_scaling: list[ScalingPoint] = Field(None, description="a list of data-parallel scaling points")
    peers: list[PeerComparison] = Field(None, description="a list of comparisons with peer frameworks")


class GridSlice(Record):
    """the slice of the grid a sweep trained {index, count}: the index-th of count (`--slice I/N`)"""

    index: Count
    count: Count


class Grid(Record):
    """the sweep's grid {variants, learning_rate, ...}"""

    variants: list[String] = Field(min_length=1, description="a list of names")
    learning_rate: list[Positive] = Field(min_length=1, description="a list of numbers > 0")
    batch_size: list[Count] = Field(min_length=1, description="a list of whole numbers >= 1")
    bn_momentum: list[Momentum] = Field(description="a list of momenta from 0 to below 1")
    epochs: Count
    seeds: list[Whole] = Field(min_length=1, description="a list of seeds")
    budget: Literal["epochs", "updates"] = Field(description="epochs or updates")
    lr_scaling: Literal["none", "linear"] = Field(description="none or linear")
    reference_batch_size: Count
    eval_every: Count | None = _nullable("a whole number >= 1", None)
    target: Fraction | None = _nullable("an accuracy between 0 and 1", None)
    slice: GridSlice = None
    ghost_batch: list[Count] = Field(None, description="a list of whole numbers >= 1")
    batch_order: list[BatchOrder] = Field(None, description="a list of batch orders (iid or classes:K)")
    # Only where --momentum or --weight-decay were given.
    momentum: list[Momentum] = Field(None, description="a list of momenta from 0 to below 1")
    weight_decay: list[NonNegative] = Field(None, description="a list of numbers >= 0")


class SweepReport(Envelope):
    """bnbench's sweep report, from `bnbench sweep`: runs of several configurations; its protocol
    holds what they share, each run's `config` and each summary entry's the rest, `sweep` the grid."""

    kind: Literal["bnbench.sweep"] = Field(description=SWEEP_KIND)
    sweep: Grid
    runs: list[SweepRun] = Field(description="a list of runs, each with its config")
    summary: dict[str, SweepSummary] = Field(
        min_length=1, description="an object of summaries, one per variant and configuration, each with its "
                                  "variant and config")


# pytest-benchmark's JSON of a harness session: only what bnbench reads. Each benchmark's
# extra_info is checked by its tag (extra_info.bnbench), against the model of TAGGED.

class MachineInfo(Record):
    """pytest-benchmark's machine_info {bnbench, bnbench_run_id, ...}"""

    bnbench: Environment
    bnbench_run_id: RunId = None


class BenchmarkInfo(Record):
    """a benchmark's extra_info {bnbench, variant, ...}"""

    bnbench: String = None


class Benchmark(Record):
    """a benchmark {extra_info, stats, ...}"""

    extra_info: BenchmarkInfo = Field(None, description="an object")
    stats: dict[str, Any] = Field(None, description="an object")
    # A tagged benchmark's extra_info and stats as their models (TAGGED), set on load.
    _info: Record | None = PrivateAttr(None)
    _stats: StepStats | None = PrivateAttr(None)

    @property
    def tag(self) -> str | None:
        return self.extra_info.bnbench if self.extra_info is not None else None

    @property
    def info(self) -> Any:
        return self._info

    @property
    def step_stats(self) -> StepStats | None:
        return self._stats


class PytestBenchmark(Record):
    """pytest-benchmark JSON of a bnbench harness session (the parts bnbench reads)"""

    machine_info: MachineInfo = Field(description="an object")
    benchmarks: list[Benchmark] = Field(description="a list of benchmarks")


class StepStats(Record):
    """pytest-benchmark's stats {median, iqr, min, max, rounds}"""

    median: Time
    iqr: IQR
    min: Number
    max: Number
    rounds: Count


class StepInfo(Record):
    """a lone update's benchmark {variant, batch_size}"""

    variant: String
    batch_size: Count = None


class AccuracyInfo(Record):
    """the accuracy benchmark {variant, summary, runs, protocol}"""

    variant: String
    summary: VariantSummary
    runs: list[Run] = Field(description="a list of runs")
    protocol: Protocol


class SeedScalingInfo(SeedScaling):
    """the seed scaling benchmark {variant, seeds, ratio, ...}"""

    variant: String


class SweepCostInfo(Record):
    """the sweep cost benchmark {variant, ratio, runs}"""

    variant: String
    ratio: Positive
    runs: Count


# A tagged benchmark's extra_info, and its stats where bnbench reads them.
TAGGED: dict[str, tuple[type[Record], type[Record] | None]] = {
    "step": (StepInfo, StepStats),
    "accuracy": (AccuracyInfo, None),
    "seed_scaling": (SeedScalingInfo, None),
    "data_parallel_scaling": (ScalingPoint, None),
    "sweep_cost": (SweepCostInfo, None),
    "peer": (PeerComparison, None),
}
