"""The peer section of ``bnbench report``: bnbench's training step against the same models in other
frameworks (``pytest benchmarks/ --peers``), a table per report, variant by peer.

Each comparison was timed in one process on one machine, in alternating rounds of the same number
of updates, so its ratio holds under that machine's load even where the times themselves moved;
ratios from different machines say nothing of each other.
"""

from __future__ import annotations

from bnbench.config import COMPILED_LOOP
from bnbench.report.table import format_table

HEADERS = ["variant", "peer", "peer ms/update", "bnbench ms/update", "peer / bnbench", "rounds x updates"]


def _rows(comparisons: list[dict]) -> list[list]:
    rows = []
    for c in sorted(comparisons, key=lambda c: (c["variant"], c["peer"])):
        rows.append([c["variant"], f"{c['peer']} {c['peer_version']}", f"{c['peer_step_s']['median'] * 1e3:.3f}",
                     f"{c['bnbench_step_s']['median'] * 1e3:.3f}", f"{c['ratio']:.2f}x",
                     f"{c.get('rounds', c['peer_step_s']['n'])} x {c['steps']}"])
    return rows


def table(comparisons: list[dict], markdown: bool = True) -> str:
    """Variant by peer: each one's median time per update and the median ratio of their rounds."""
    return format_table(HEADERS, _rows(comparisons), markdown=markdown)


def sections(loaded: list[dict]) -> list[str]:
    """Markdown: a section per report that holds peer comparisons."""
    lines = []
    for r in loaded:
        comparisons = r.get("peers") or []
        if not comparisons:
            continue
        lines += [f"## Against other frameworks [{r['ref']}]", "",
                  f"The same models trained in batches of {comparisons[0].get('batch_size', 32)} with plain SGD on "
                  f"{r['label']}, in one process: PyTorch eager (a plain training loop) and Keras 3 on JAX "
                  "(`model.fit`), each in rounds of updates timed in alternation with as many of bnbench's "
                  f"{_how(comparisons)}. Times are medians over the rounds; "
                  "*peer / bnbench* is the median over rounds of the peer's round over bnbench's round just "
                  "before it: above 1, bnbench is faster. Training only, no evaluation.", "",
                  table(comparisons), ""]
    return lines


def _how(comparisons: list[dict]) -> str:
    """How bnbench's rounds ran, as recorded (reports before the compiled loop timed lone steps)."""
    if all(c.get("bnbench_round") == COMPILED_LOOP for c in comparisons):
        return "updates, its step compiled as one loop over the round's batches (as its epochs run), synchronised once"
    if not any(c.get("bnbench_round") for c in comparisons):
        return "lone compiled steps (synchronised after each update, which understates bnbench)"
    return "updates, as each row's report recorded (a compiled loop, or lone steps synchronised after each)"
