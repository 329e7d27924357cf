"""The model variants bnbench trains: each one is data, a name and the model it builds.

To add a variant, add one entry to VARIANTS. The training loop, the benchmarks and the reports
pick it up by name.
"""

from __future__ import annotations

import dataclasses

from bnbench.errors import BnbenchError
from bnbench.models import MLP


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    description: str
    model: MLP

    def describe(self) -> dict:
        fields = {f.name: getattr(self.model, f.name) for f in dataclasses.fields(MLP)
                  if f.name not in ("parent", "name")}
        return {"name": self.name, "description": self.description,
                "model": {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}}


def _variants(*variants: Variant) -> dict[str, Variant]:
    return {v.name: v for v in variants}


VARIANTS = _variants(
    Variant("seed_plain", "the notebook's model before BN: Dense-LeakyReLU(0.3) x2, he_normal",
            MLP(activation="leaky_relu", hidden_init="he_normal")),
    Variant("seed_bn", "the notebook's model after BN: BN on inputs, Dense-ReLU-BN x2, glorot_uniform",
            MLP(activation="relu", bn="after_activation", bn_inputs=True)),
    Variant("bn_before_activation", "BN as in the paper: BN on inputs, Dense(no bias)-BN-ReLU x2",
            MLP(activation="relu", bn="before_activation", bn_inputs=True)),
    Variant("plain_relu", "seed_plain with ReLU and glorot_uniform: seed_bn without its BN layers",
            MLP(activation="relu")),
    Variant("seed_plain_deep", "seed_plain with four hidden layers (300-300-100-100)",
            MLP(hidden=(300, 300, 100, 100), activation="leaky_relu", hidden_init="he_normal")),
)
NOTEBOOK_VARIANTS = ("seed_plain", "seed_bn")


def get(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise BnbenchError(f"unknown variant {name!r}: choose from {', '.join(VARIANTS)} "
                           "(`bnbench variants` lists them)") from None
