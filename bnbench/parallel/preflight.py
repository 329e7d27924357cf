"""Before any training: what could stop a run on its layout is checked, and the processes of a
job agree that they are about to train the same thing."""

from __future__ import annotations

from typing import Sequence

from bnbench.data.sources import Dataset
from bnbench.parallel import devices, distributed
from bnbench.parallel.devices import DataParallel


def ready_to_train(parallel: DataParallel, batch_sizes: Sequence[int], runs: int, dataset: Dataset,
                   argv: Sequence[str], device_counts: Sequence[int] = ()) -> None:
    """What can stop a data-parallel run, checked before any training: every batch splits over
    the devices (and over each of ``device_counts``), the layout reaches every process; then, in a
    job of several processes, every process's word that it is ready with the same arguments and
    data (where each process read it from and how may differ)."""
    for batch_size in batch_sizes:
        for count in [parallel.devices, *device_counts]:
            DataParallel(count).check_batches(batch_size, len(dataset.train_labels))
    devices.seed_mesh(runs, None, parallel.devices, batch_sizes)
    facts = {k: v for k, v in dataset.describe().items() if k not in ("location", "source")}
    distributed.agree(distributed.fingerprint(list(argv), facts))
