"""The WID pruning schedule as pure functions: optimizer step -> how many indices each mask group has pruned.

Nothing here touches a model, so the schedule can be tested, plotted and reasoned about on its own
(docs/method.md, "The schedule"). Group *kinds* are:

- ``hidden``    the residual stream (one group for the whole model),
- ``attention`` the attention dims of one layer (one group per layer, all with the same count),
- ``ffn``       the FFN neurons of one layer (one group per layer),
- ``head``      the MLM head's internal dims,
- ``pooler``    the pooler's output dims (only in models that have a pooler).

Rules (reference values; ``k = (step - pruning_start) // mask_interval`` is the number of completed intervals,
``pruning_start`` is 0 in the reference):

- ``ffn``, ``head`` and ``pooler`` grow linearly: ``floor(k * total / pruning_intervals)``, capped at the total.
- ``hidden`` and ``attention`` under ``"dim"`` remove the same number of dims from every head, in increments of
  ``max(1, per_head // (pruning_intervals // 2))`` dims per head per interval (the reference code's rule: for a
  768-wide teacher and target 192 that is 6 dims per head, done by step 4,000; for target 516, 2 per head, done
  by step 5,500).
- ``hidden`` and ``attention`` under ``"head"`` remove one whole head every ``head_prune_every`` intervals.
"""

from __future__ import annotations

import math

from .config import TeacherDims, WIDConfig

GROUP_KINDS = ("hidden", "attention", "ffn", "head", "pooler")


def total_pruned(config: WIDConfig, dims: TeacherDims, kind: str) -> int:
    """How many indices a group of this kind has pruned once the schedule is complete."""
    if config.target_hidden_size is None or config.target_intermediate_size is None:
        config = config.resolve(dims)  # sizes given as a ratio of the teacher
    if kind == "ffn":
        return dims.intermediate_size - config.target_intermediate_size
    if kind in GROUP_KINDS:
        return dims.hidden_size - config.target_hidden_size
    raise ValueError(f"Unknown mask group kind {kind!r}; expected one of {GROUP_KINDS}.")


def _per_head_cut(config: WIDConfig, dims: TeacherDims, total: int) -> tuple[int, int]:
    """Under "dim": dims each head loses in all, and per mask interval (at least one, unlike the reference)."""
    per_head = total // dims.num_attention_heads
    return per_head, max(1, per_head // max(1, config.pruning_intervals // 2))


def pruned_count(config: WIDConfig, dims: TeacherDims, kind: str, step: int) -> int:
    """Number of pruned indices of a group of `kind` after optimizer step `step`.

    Example (bert-base teacher, WID11):
        >>> from wid_hf import WIDConfig
        >>> from wid_hf.config import TeacherDims
        >>> cfg, dims = WIDConfig.from_preset("wid11"), TeacherDims(768, 3072, 12)
        >>> [pruned_count(cfg, dims, "attention", s) // 12 for s in (499, 500, 1000, 4000, 9000)]
        [0, 6, 12, 48, 48]
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}.")
    total = total_pruned(config, dims, kind)
    k = completed_intervals(config, step)
    if total == 0 or k == 0:
        return 0
    if kind in ("hidden", "attention") and config.head_strategy == "dim":
        heads = dims.num_attention_heads
        per_head, increment = _per_head_cut(config, dims, total)
        return heads * min(per_head, k * increment)
    if kind in ("hidden", "attention"):
        head_size = dims.head_size
        return head_size * min(total // head_size, k // config.head_prune_every)
    return min(total, (k * total) // config.pruning_intervals)


def kept_sizes(config: WIDConfig, dims: TeacherDims, step: int) -> dict[str, int]:
    """Kept width of every group kind after optimizer step `step`."""
    full = {
        "hidden": dims.hidden_size,
        "attention": dims.hidden_size,
        "ffn": dims.intermediate_size,
        "head": dims.hidden_size,
        "pooler": dims.hidden_size,
    }
    return {kind: full[kind] - pruned_count(config, dims, kind, step) for kind in GROUP_KINDS}


def intervals_to_finish(config: WIDConfig, dims: TeacherDims, kind: str) -> int:
    """Number of completed mask intervals after which a group of `kind` has reached its target."""
    total = total_pruned(config, dims, kind)
    if total == 0:
        return 0
    if kind in ("hidden", "attention") and config.head_strategy == "dim":
        per_head, increment = _per_head_cut(config, dims, total)
        return math.ceil(per_head / increment)
    if kind in ("hidden", "attention"):
        return (total // dims.head_size) * config.head_prune_every
    return config.pruning_intervals


def pruning_end_step(config: WIDConfig, dims: TeacherDims, kinds=GROUP_KINDS) -> int:
    """First optimizer step at which every group of the given kinds has reached its target width."""
    return config.pruning_start + config.mask_interval * max(intervals_to_finish(config, dims, kind) for kind in kinds)


def completed_intervals(config: WIDConfig, step: int) -> int:
    """Mask intervals completed after optimizer step `step` (the clock starts at ``pruning_start``)."""
    return max(0, step - config.pruning_start) // config.mask_interval


def is_update_step(config: WIDConfig, step: int) -> bool:
    """Whether the masks are re-selected before optimizer step `step`."""
    return step > config.pruning_start and (step - config.pruning_start) % config.mask_interval == 0
