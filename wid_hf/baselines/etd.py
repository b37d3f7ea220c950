"""Extract-Then-Distill (Chen et al., ICANN 2021): build a narrower (and optionally shallower) student once, by
extracting a subset of the teacher's hidden dims, attention dims/heads and FFN neurons, then train it.

Extraction reuses WID's own machinery: a `WIDModel` with identity compactors and chosen masks *is* the extracted
model, and `merge_and_unload` slices the weights exactly (it also rescales the query so a thinner head keeps the
teacher's score scale). ETD-Rand picks indices at random; ETD-Impt by first-order mask-gradient importance
measured on a sample of the corpus: for an identity compactor, the first-order loss change of removing index j is
the j-th diagonal entry of its gradient, accumulated as |g_jj| over batches.

    >>> student = extract_student(teacher, WIDConfig(target_ratio=0.5), importance="gradient",
    ...                           batches=sample_batches, layers=[0, 2, 4])                    # doctest: +SKIP
"""

from __future__ import annotations

import copy
import itertools
from typing import Iterable, Optional, Sequence

import torch
from torch import nn

from ..config import WIDConfig
from ..model import WIDModel
from ..pruner import first_order_importance, prune_to_targets
from ..utils import layer_parameter_count

IMPORTANCES = ("random", "gradient")


def select_layers(model: nn.Module, keep: Sequence[int]) -> nn.Module:
    """A copy of a BERT model keeping only the encoder layers `keep` (in that order), e.g. ``[0, 1, 2]`` (lower),
    ``[3, 4, 5]`` (upper) or ``uniform_layers(6, 3)``."""
    model = copy.deepcopy(model)
    encoder = model.bert.encoder if hasattr(model, "bert") else model.encoder
    total = len(encoder.layer)
    if not keep or any(not 0 <= i < total for i in keep):
        raise ValueError(f"layers to keep must be indices in [0, {total}), got {list(keep)}.")
    encoder.layer = nn.ModuleList([encoder.layer[i] for i in keep])
    for index, layer in enumerate(encoder.layer):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = index
    model.config.num_hidden_layers = len(keep)
    return model


def uniform_layers(total: int, keep: int) -> list[int]:
    """`keep` layer indices spread uniformly over `total` (always including the last), as ETD chooses them."""
    if not 1 <= keep <= total:
        raise ValueError(f"cannot keep {keep} of {total} layers")
    step = total / keep
    return [min(total - 1, round((i + 1) * step) - 1) for i in range(keep)]


def layer_choice(name: str, total: int, keep: int) -> list[int]:
    """'lower', 'upper' or 'uniform' teacher layers (How to Distill your BERT's initialisations)."""
    if name == "lower":
        return list(range(keep))
    if name == "upper":
        return list(range(total - keep, total))
    if name == "uniform":
        return uniform_layers(total, keep)
    raise ValueError(f"layer choice must be lower, upper or uniform, got {name!r}")


def parse_layers(spec):
    """A layer choice as users write it, checked: None (all layers), '0,2,4' or a list -> [0, 2, 4], or
    'lower:N' / 'upper:N' / 'uniform:N' (kept as a string: it depends on the teacher's depth)."""
    if spec is None or isinstance(spec, (list, tuple)):
        return None if spec is None else [int(i) for i in spec]
    kind, sep, n = str(spec).partition(":")
    if sep:
        if kind in ("lower", "upper", "uniform") and n.isdigit():
            return str(spec)
    else:
        try:
            return [int(x) for x in str(spec).split(",")]
        except ValueError:
            pass
    raise ValueError(f"layers {spec!r}: use a list such as 0,2,4 or lower:N / upper:N / uniform:N")


def resolve_layers(spec, total: int) -> Optional[list[int]]:
    """The teacher layer indices of a layer choice (see `parse_layers`) for a teacher of `total` layers."""
    spec = parse_layers(spec)
    if spec is None or isinstance(spec, list):
        return spec
    kind, _, n = spec.partition(":")
    return layer_choice(kind, total, int(n))


def truncation_layers(teacher_config, hidden: int, ffn: int) -> int:
    """How many full-width teacher layers fit the encoder budget of a student at (hidden, ffn), same depth."""
    student = layer_parameter_count(hidden, hidden, ffn)
    teacher = layer_parameter_count(teacher_config.hidden_size, teacher_config.hidden_size,
                                    teacher_config.intermediate_size)
    return max(1, round(teacher_config.num_hidden_layers * student / teacher))


def gradient_importance(wid: WIDModel, batches: Iterable[dict], max_batches: Optional[int] = None) -> dict[str, torch.Tensor]:
    """Per-group importance: sum over batches of |diagonal of the compactor gradients| over every compactor in the
    group (identity compactors, so this is the first-order effect of removing each index;
    `wid_hf.pruner.first_order_importance`, which budget-mode WID starts its Taylor scores from)."""
    batches = batches if max_batches is None else itertools.islice(batches, max_batches)
    scores = first_order_importance(wid, batches, lambda model, batch: model(**batch).loss)
    return {name: scores[name].cpu() if name in scores else torch.zeros(group.size)
            for name, group in wid.groups.items()}


def extract_student(
    teacher: nn.Module,
    config: WIDConfig,
    importance: str = "gradient",
    batches: Optional[Iterable[dict]] = None,
    max_batches: Optional[int] = 16,
    layers: Optional[Sequence[int]] = None,
    seed: int = 0,
    progressbar: bool = False,
) -> nn.Module:
    """ETD-Rand (``importance="random"``) or ETD-Impt (``"gradient"``, needs `batches` with labels): a standard
    student of the teacher's class at `config`'s widths, with the teacher's weights on the kept indices.
    `layers` optionally keeps a subset of the encoder layers. The teacher is not modified."""
    if importance not in IMPORTANCES:
        raise ValueError(f"importance must be one of {IMPORTANCES}, got {importance!r}")
    if importance == "gradient" and batches is None:
        raise ValueError("ETD-Impt needs batches of the corpus (with labels) to measure importance.")
    source = select_layers(teacher, layers) if layers is not None else copy.deepcopy(teacher)
    wid = WIDModel(source, config)
    if importance == "gradient":
        scores = gradient_importance(wid, batches, max_batches)
    else:
        g = torch.Generator().manual_seed(seed)
        scores = {name: torch.rand(group.size, generator=g) for name, group in wid.groups.items()}
    prune_to_targets(wid, scores)
    wid.masks.set_hard(True)
    return wid.merge_and_unload(progressbar=progressbar)
