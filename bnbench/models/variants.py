"""The model variants bnbench trains: each one is data, a name and the model it builds.

To add a variant, add one entry to VARIANTS. The training loop, the benchmarks and the reports
pick it up by name. A variant's numbers can be changed on the command line without a new entry:
``group_norm:groups=2`` is ``group_norm`` with its model's ``groups`` field set to 2.
"""

from __future__ import annotations

import ast
import dataclasses

import flax.linen as nn

from bnbench import config
from bnbench.errors import BnbenchError
from bnbench.models import MLP, ConvNet


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    description: str
    model: nn.Module

    def fields(self) -> dict:
        """The model's declared fields and their values, as a report records them."""
        values = {f.name: getattr(self.model, f.name) for f in dataclasses.fields(self.model)
                  if f.name not in ("parent", "name", "bn_axis_name")}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}

    def describe(self) -> dict:
        return {"name": self.name, "description": self.description,
                "model": {"family": type(self.model).__name__, **self.fields()}}

    def check(self, image_shape, num_classes: int | None = None) -> None:
        """Builds the model's variables for images of ``image_shape`` without computing them, so that
        a model that cannot be built (a group count that does not divide a width, a field out of its
        range) or that has fewer outputs than the data has classes fails before any training, with
        its one-line error."""
        import jax
        import jax.numpy as jnp

        jax.eval_shape(lambda: self.model.init(jax.random.PRNGKey(0), jnp.zeros((1, *image_shape)), train=False))
        if num_classes is not None and self.model.num_classes < num_classes:
            raise BnbenchError(f"{self.name}: num_classes={self.model.num_classes} but the data has {num_classes} "
                               f"classes: set num_classes={num_classes} or more")

    def check_batches(self, batch_size: int, train_examples: int, data_devices: int = 1) -> None:
        """What the model's batch-statistics fields ask of the batches, checked before any training:
        a ghost batch that divides the batch size, on one device; population statistics over no
        more full training batches than there are."""
        ghost = getattr(self.model, "ghost_batch", None)
        if ghost is not None and batch_size % ghost:
            fits = [g for g in range(1, batch_size + 1) if batch_size % g == 0]
            raise BnbenchError(f"{self.name}: ghost_batch={ghost} does not divide the batch size {batch_size}; "
                               f"choose a group size that does ({', '.join(map(str, fits))})")
        if ghost is not None and data_devices > 1:
            raise BnbenchError(f"{self.name}: ghost_batch with --data-parallel {data_devices}: a ghost batch is "
                               "local statistics on one device, and --data-parallel N --batch-stats local their "
                               "data-parallel spelling; use one of them")
        if getattr(self.model, "eval_stats", "moving") == "population":
            batches = self.model.population_batches
            if batches > train_examples // batch_size:
                raise BnbenchError(f"{self.name}: population_batches={batches} at batch {batch_size} needs "
                                   f"{batches * batch_size} training examples, and there are {train_examples}; "
                                   f"choose population_batches={max(1, train_examples // batch_size)} or fewer")


def _variants(*variants: Variant) -> dict[str, Variant]:
    return {v.name: v for v in variants}


VARIANTS = _variants(
    # The notebook's two models, and what separates them.
    Variant("seed_plain", "the notebook's model before BN: Dense-LeakyReLU(0.3) x2, he_normal",
            MLP(activation="leaky_relu", hidden_init="he_normal")),
    Variant("seed_bn", "the notebook's model after BN: BN on inputs, Dense-ReLU-BN x2, glorot_uniform",
            MLP(norm="batch_norm", norm_inputs=True)),
    Variant("plain_relu", "seed_plain with ReLU and glorot_uniform: seed_bn without its BN layers",
            MLP()),
    # BatchNorm elsewhere, and evaluated otherwise.
    Variant("bn_before_activation", "BN as in the paper: BN on inputs, Dense(no bias)-BN-ReLU x2",
            MLP(norm="batch_norm", placement="before_activation", norm_inputs=True)),
    Variant("bn_hidden_only", "seed_bn without the BN on the raw inputs: Dense-ReLU-BN x2",
            MLP(norm="batch_norm")),
    Variant("bn_batch_stats_eval", "seed_bn evaluated with each batch of 32's own statistics, not the moving ones",
            MLP(norm="batch_norm", norm_inputs=True, eval_stats="batch", eval_batch_size=32)),
    Variant("batch_renorm", "seed_bn with Batch Renormalization (r_max 3, d_max 5, warm-up 1k updates)",
            MLP(norm="batch_renorm", norm_inputs=True)),
    # The alternatives, in BatchNorm's places in the notebook's MLP.
    Variant("layer_norm", "seed_bn with LayerNorm in BN's places (inputs and after each activation)",
            MLP(norm="layer_norm", norm_inputs=True)),
    Variant("group_norm", "seed_bn with GroupNorm, 4 groups, in BN's places",
            MLP(norm="group_norm", norm_inputs=True, groups=4)),
    Variant("rms_norm", "seed_bn with RMSNorm in BN's places",
            MLP(norm="rms_norm", norm_inputs=True)),
    Variant("seed_plain_deep", "seed_plain with four hidden layers (300-300-100-100)",
            MLP(hidden=(300, 300, 100, 100), activation="leaky_relu", hidden_init="he_normal")),
    # A small ConvNet: (conv3x3-norm-ReLU-maxpool) x2 with 8 and 16 channels, Dense 10.
    Variant("conv_plain", "ConvNet: (conv3x3-ReLU-maxpool) x2, 8 and 16 channels, Dense 10; no normalization",
            ConvNet()),
    Variant("conv_bn", "ConvNet with BN (over batch, height, width) between each conv and its ReLU",
            ConvNet(norm="batch_norm")),
    Variant("conv_group_norm", "ConvNet with GroupNorm, 4 groups, between each conv and its ReLU",
            ConvNet(norm="group_norm", groups=4)),
    Variant("conv_layer_norm", "ConvNet with LayerNorm (over height, width, channels) after each conv",
            ConvNet(norm="layer_norm")),
)
NOTEBOOK_VARIANTS = ("seed_plain", "seed_bn")
# A comma that separates fields, not one inside a value such as (8,16) or [8,16].
_FIELD_COMMA = config.FIELD_COMMA


def names(text: str) -> list[str]:
    """A comma-separated list of variants (``pytest benchmarks/ --variants``). A variant's own fields are
    comma-separated too (``conv_bn:channels=(8,16),groups=2``): a piece with '=' but no ':' continues the
    variant before it."""
    found: list[str] = []
    for piece in _FIELD_COMMA.split(text):
        piece = piece.strip()
        if found and "=" in piece and ":" not in piece:
            found[-1] += "," + piece
        elif piece:
            found.append(piece)
    return found


def get(name: str, precision: str | None = None) -> Variant:
    """The variant ``name``, or ``base:field=value,...``: the variant ``base`` with those fields of
    its model replaced (named with the whole text, so reports tell them apart). ``precision``
    (``--precision``): the model's precision field, unless the name sets it."""
    variant = _get(name)
    if precision is None or variant.model.precision == precision or "precision" in _overridden(name):
        return variant
    return Variant(variant.name, variant.description, variant.model.clone(precision=precision))


def _overridden(name: str) -> set[str]:
    overrides = name.partition(":")[2]
    return {item.partition("=")[0] for item in _FIELD_COMMA.split(overrides)} if overrides else set()


def _get(name: str) -> Variant:
    base, _, overrides = name.partition(":")
    try:
        variant = VARIANTS[base]
    except KeyError:
        raise BnbenchError(f"unknown variant {base!r}: choose from {', '.join(VARIANTS)} "
                           "(`bnbench variants` lists them)") from None
    if not overrides:
        return variant
    fields = variant.fields()
    changes = {}
    for item in _FIELD_COMMA.split(overrides):
        key, equals, text = item.partition("=")
        if not equals or key not in fields:
            raise BnbenchError(f"{name!r}: {item!r} is not FIELD=VALUE with a field of {base}'s model "
                               f"({', '.join(fields)})")
        changes[key] = _value(name, key, text, fields[key])
    model = variant.model.clone(**changes)
    if {"depth", "width"} & set(changes):  # the report records the hidden widths that are built
        try:
            model.check_fields()
        except BnbenchError as e:
            raise BnbenchError(f"{name!r}: {e}") from None
        model = model.clone(hidden=model.layers())
    return Variant(name, f"{variant.description}; {overrides}", model)


def _value(name: str, key: str, text: str, current):
    """``text`` as a value of the same type as the field's current one."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if isinstance(current, list):  # a tuple field, such as hidden=(300,100) or channels=(8,16)
        current, value = tuple(current), tuple(value) if isinstance(value, (list, tuple)) else (value,)
    wanted = type(current) if current is not None else type(value)
    if isinstance(current, bool) != isinstance(value, bool) or not isinstance(value, (wanted, type(None))):
        raise BnbenchError(f"{name!r}: {key}={text} is not of the field's type ({wanted.__name__}, like {current!r})")
    return value
