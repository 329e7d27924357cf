"""bnbench's training against the same models in PyTorch eager and Keras 3 on JAX (opt-in: --peers).

Each case times rounds of N updates of the peer in alternation with N of bnbench's for the same
variant (its step compiled as a loop over the round's batches, as its epochs run), in this process,
and records both per-step times and their ratio (``measure.peers``); `bnbench report` shows them as
a table. Without --peers every case is skipped before any setup; a peer that is not installed is
skipped with one line naming it.
"""

from __future__ import annotations

import dataclasses

import pytest

from bnbench.engine import train
from bnbench.measure import peers, steptime


def test_peer_step_time(benchmark, bnbench_session, peer_case):
    """Rounds of N updates of a peer (the benchmark's time) against N of bnbench's compiled loop
    (untimed setup before each round); the peer pays its compilation or first-call costs in a warm-up round."""
    s = bnbench_session
    peer, name = peer_case
    if dataclasses.replace(s.protocol, epochs=1, batch_order="iid") != train.Protocol(epochs=1) \
            or s.precision != "float32":
        pytest.skip("the peers train with the notebook's plain SGD at 1e-3 in float32: drop --optimizer, "
                    "--momentum, --weight-decay and --precision to compare")
    try:
        timed = peers.program(peer, name, s.dataset.train_images, s.dataset.train_labels, s.peer_steps,
                              s.dataset.num_classes)
    except peers.PeerMissing as e:
        pytest.skip(str(e))
    base = steptime.RoundProgram(s.variant(name), *peers.round_data(s.dataset.train_images, s.dataset.train_labels,
                                                                     s.peer_steps), batch_size=peers.BATCH_SIZE)
    for program in (base, timed):  # compile, first-call allocations, page faults
        program()
        program.times.clear()
    benchmark.group = "peers"
    benchmark.extra_info.update({"bnbench": "peer", "variant": name, "peer": peer})
    benchmark.pedantic(timed, setup=base, rounds=s.peer_rounds, iterations=1)
    if benchmark.disabled:
        return
    figures = peers.comparison(peer, peers.version(peer), name, s.peer_steps, timed.times, base.times)
    benchmark.extra_info.update(figures)
    s.peers.append(figures)
