"""Before any training: what could stop a run on its layout is checked, and the processes of a
job agree that they are about to train the same thing."""

from __future__ import annotations

from typing import Sequence

from bnbench.data.sources import Dataset
from bnbench.models.variants import Variant
from bnbench.options import check_batch_order
from bnbench.parallel import devices, distributed
from bnbench.parallel.devices import DataParallel


def ready_to_train(parallel: DataParallel, batch_sizes: Sequence[int], runs: int, dataset: Dataset,
                   argv: Sequence[str], device_counts: Sequence[int] = (), variants: Sequence[Variant] = (),
                   batch_orders: Sequence[str] = ()) -> None:
    """What can stop a data-parallel run, checked before any training: every batch splits over
    the devices (and over each of ``device_counts``), the layout reaches every process; then, in a
    job of several processes, every process's word that it is ready with the same arguments and
    data (where each process read it from and how may differ). ``variants``: each checked against
    every batch size (``Variant.check_batches``: a ghost batch must divide it); ``batch_orders``:
    each must form batches of every size from the data's classes."""
    for batch_size in batch_sizes:
        for count in [parallel.devices, *device_counts]:
            DataParallel(count).check_batches(batch_size, len(dataset.train_labels))
        for variant in variants:
            variant.check_batches(batch_size, len(dataset.train_labels), parallel.devices)
        for order in batch_orders:
            check_batch_order(order, batch_size, dataset.num_classes)
    devices.seed_mesh(runs, None, parallel.devices, batch_sizes)
    facts = {k: v for k, v in dataset.describe().items() if k not in ("location", "source")}
    distributed.agree(distributed.fingerprint(list(argv), facts))
