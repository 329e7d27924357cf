"""The documents generated from the committed reports, and the one command that regenerates them.

    python -m bnbench.report.generated           # rewrite every generated file
    python -m bnbench.report.generated --check   # exit 1 naming each file that is out of date

Run from the repository's root. It writes ``results/README.md`` and its plots (``bnbench report``
over ``RESULTS``), the tables between ``<!-- generated: summary REPORT -->`` and
``<!-- end generated -->`` in README.md and docs/*.md (the report's summary table), and the JSON
Schema documents in docs/schema/. CI runs ``--check``, so a table copied by hand cannot drift from
its report.
"""

from __future__ import annotations

import filecmp
import re
import sys
import tempfile
from pathlib import Path

from bnbench.errors import BnbenchError

# The reports results/README.md summarizes, in its order, and the variants it sets the others against.
RESULTS = (
    "cpu-mlp-variants-5seeds.json", "cpu-convnet-3seeds.json", "cpu-sweep-lr.json", "cpu-sweep-batch.json",
    "cpu-sweep-momentum.json", "cpu-norms-1seed.json", "cpu-mlp-variants-1seed.json", "cpu-benchmark-variants.json",
    "cpu-pytest-benchmark-variants.json", "cpu-notebook-5seeds.json", "cpu-amd-epyc-notebook-5seeds.json",
    "cpu-benchmark.json", "cpu-pytest-benchmark.json", "cpu-data-parallel-1device-2epochs.json",
    "cpu-data-parallel-4sync-2epochs.json", "cpu-data-parallel-4local-2epochs.json",
    "cpu-data-parallel-scaling-pytest-benchmark.json", "cpu-ghost-batch-mlp.json", "cpu-batch-order.json",
    "cpu-eval-stats.json", "cpu-ghost-batch-convnet.json", "cpu-precision-5seeds.json", "cpu-optimizer-momentum.json",
    "cpu-optimizer-adamw.json", "cpu-depth.json",
)
# Each variant against these (where a report trained them), and each against its own float32 self.
BASELINES = ("seed_bn", "plain_relu", "conv_plain", "conv_bn", "precision=float32")
# Where only generated files live: anything else there is stale.
GENERATED_KINDS = ("docs/schema/*.json", "results/*.png", "results/*.svg")
BLOCK = re.compile(r"(<!-- generated: (\w+) ([^>]+?) -->\n).*?(<!-- end generated -->)", re.S)


def fill_blocks(text: str, root: Path) -> str:
    """``text`` with each generated block's content made from the report it names: ``summary
    REPORT`` (the summary table), ``differences REPORT BASELINE`` (every variant against the
    baseline, seed by seed, with verdicts) or ``sweep REPORT AXIS`` (a sweep's final accuracies
    along one of its axes)."""
    from bnbench.report import reading
    from bnbench.report.compare import against_baselines, field_baseline
    from bnbench.report.summary import summary_table

    def fill(match: re.Match) -> str:
        kind, (report, *rest) = match.group(2), match.group(3).split()
        raw = reading.read_valid(root / report)
        seeds = len(raw["protocol"]["seeds"])
        if kind == "summary" and not rest:
            env = raw["environment"]
            machine = env.get("cpu_model") if env.get("backend") == "cpu" else env.get("device_kind")
            table = summary_table(raw, markdown=True)
            source = (f"From `{report}`: {seeds} seeds, 95% intervals over seeds; times measured on "
                      f"{machine or 'an unrecorded machine'} ({env.get('backend')}).")
        elif kind == "differences" and len(rest) == 1:
            loaded = reading.load_all([str(root / report)])
            loaded[0]["ref"] = 1
            table = against_baselines(loaded, rest, markdown=True).split("\n", 2)[2]
            minus = f"itself at {rest[0]}" if field_baseline(rest[0]) else rest[0]
            source = (f"From `{report}`, {seeds} seeds: each variant minus {minus}, paired over seeds, Holm-adjusted "
                      f"within each accuracy; `bnbench compare {report} --baseline {rest[0]}`.")
        elif kind == "sweep" and len(rest) == 1:
            from bnbench.report import sweeps

            loaded = reading.load_all([str(root / report)])[0]
            if rest[0] not in sweeps.swept_axes(loaded["sweep"]):
                raise BnbenchError(f"generated block 'sweep {match.group(3)}': {rest[0]} is not an axis of that "
                                   f"sweep; use one of {', '.join(sweeps.swept_axes(loaded['sweep']))}")
            table = "\n\n".join(sweeps.table(loaded, rest[0], metric) for metric in ("val_accuracy", "test_accuracy"))
            source = (f"From `{report}`, {seeds} seeds: final accuracy, mean ± 95% CI half-width over seeds; "
                      f"plot in `results/README.md`.")
        else:
            raise BnbenchError(f"generated block {kind!r} (for {match.group(3)}): use 'summary REPORT', "
                               "'differences REPORT BASELINE' or 'sweep REPORT AXIS'")
        return f"{match.group(1)}{table}\n\n{source}\n{match.group(4)}"

    return BLOCK.sub(fill, text)


def documents(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def regenerate(root: Path, out: Path) -> list[tuple[Path, Path]]:
    """Writes every generated file for ``root`` under ``out`` (``out`` may be ``root``); returns
    (written, committed) pairs."""
    from bnbench.record import schema

    pairs = []
    for doc in documents(root):
        target = out / doc.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        text = fill_blocks(doc.read_text(), root)
        if target != doc or text != doc.read_text():
            target.write_text(text)
        pairs.append((target, doc))
    pairs += [(path, root / "results" / path.name) for path in results_page(root, out)]
    if hasattr(schema, "write_documents"):
        for path in schema.write_documents(out / "docs" / "schema"):
            pairs.append((path, root / "docs" / "schema" / path.name))
    return pairs


def results_page(root: Path, out: Path) -> list[Path]:
    """``bnbench report`` over RESULTS into ``out``/results: the page and its plots."""
    from bnbench.report.page import write_citable

    return write_citable([f"results/{name}" for name in RESULTS], out / "results", baselines=BASELINES,
                         force=out != root)


def main(argv: list[str]) -> int:
    root = Path.cwd()
    if not (root / "results").is_dir() or not (root / "README.md").is_file():
        print("bnbench: error: run this from the root of a bnbench checkout (with README.md and results/)",
              file=sys.stderr)
        return 2
    try:
        if "--check" not in argv:
            for written, _ in regenerate(root, root):
                print(written.relative_to(root))
            return 0
        with tempfile.TemporaryDirectory() as tmp:
            pairs = regenerate(root, Path(tmp))
            stale = [committed.relative_to(root) for written, committed in pairs
                     if not committed.is_file() or not filecmp.cmp(written, committed, shallow=False)]
        # Files of generated kinds that regenerating would not write: left from an older page.
        expected = {committed for _, committed in pairs}
        leftover = [path.relative_to(root) for pattern in GENERATED_KINDS for path in sorted(root.glob(pattern))
                    if path not in expected]
    except BnbenchError as e:
        print(f"bnbench: error: {e}", file=sys.stderr)
        return 2
    for path in stale:
        print(f"out of date: {path}")
    for path in leftover:
        print(f"not generated any more: {path}")
    if stale:
        print("regenerate them with `python -m bnbench.report.generated` and commit the result", file=sys.stderr)
    if leftover:
        print("remove the files no longer generated (git rm)", file=sys.stderr)
    stale += leftover
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
