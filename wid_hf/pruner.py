"""The mask state machine of WID: which indices each group has pruned, and what happens to the pruned entries.

    soft masks ──(every mask_interval steps)──> re-select the lowest-scoring indices (`update_masks`; with
         │          monotone masks, from the kept set only) and, every step, drive pruned entries towards zero
         │          (`apply_penalty`, the reference; or `apply_decay`, linear to exactly zero)
         └──(at `hard_mask_step`)──> prune every group to its target, zero pruned entries exactly, keep them at
                                     zero (`finalize_masks`); nothing changes afterwards

Each function takes the `WIDModel` (its mask groups, `WIDMasks` buffers and resolved `WIDConfig`). How many indices
are pruned at a step is the pure schedule in `schedule.py`; how a group is scored and the kept set chosen is
`mask_groups.py`. A new scoring or decay rule is one function here (see docs/method.md, "The schedule").
"""

from __future__ import annotations

from typing import Optional

import torch

from .mask_groups import MaskGroup, broadcast_mask, select_kept
from .schedule import is_update_step, pruned_count


def select(model, group: MaskGroup, n_pruned: int, scores: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Kept mask of `group` with its `n_pruned` lowest-scoring indices pruned. `scores` default to the group's own
    importance under ``mask_scoring``; under ``head_strategy="head"`` hidden/attention groups lose whole heads."""
    if scores is None:
        scores = importance(model, group)
    if model.wid_config.monotone_masks:  # pruned stays pruned: already-pruned indices rank lowest
        scores = scores.float().masked_fill(~model.masks.get(group.name), float("-inf"))
    if group.kind in ("hidden", "attention"):
        return select_kept(scores, n_pruned, block_size=group.block_size,
                           whole_blocks=model.wid_config.head_strategy == "head")
    return select_kept(scores, n_pruned)


def importance(model, group: MaskGroup) -> torch.Tensor:
    """A group's importance per index under ``mask_scoring``: compactor norms ("reference", "aggregate"), or the
    moving average of first-order scores accumulated by `accumulate_taylor` ("taylor")."""
    if model.wid_config.mask_scoring == "taylor":
        return model.masks.score(group.name).clone()
    return group.scores(model.wid_config.mask_scoring)


def _first_order_terms(group: MaskGroup):
    """For each compactor of `group` that has a gradient: ``sum of G * W`` over its entries of each index (row j of
    an output compactor, column j of an input compactor), the derivative of the loss along scaling those entries."""
    for param, how in group.compactor_entries():
        if param.grad is not None:
            yield (param.grad.float() * param.float()).sum(dim=1 if how == "rows" else 0)


@torch.no_grad()
def taylor_step_scores(model) -> dict[str, torch.Tensor]:
    """This step's first-order score of every index of every group, from the gradients in ``.grad``: for index j,
    ``|sum of G * W|`` over every compactor entry of j (row j of output compactors, column j of input compactors),
    which is the first-order change of the loss if those entries were zeroed. With ``taylor_per_compactor``, the sum
    of each compactor's ``|sum of G * W|`` instead (the form of `first_order_importance`)."""
    per_compactor = model.wid_config.taylor_per_compactor
    scores = {}
    for group in model.groups.values():
        step_score = None
        for gw in _first_order_terms(group):
            if per_compactor:
                gw = gw.abs()
            step_score = gw if step_score is None else step_score + gw
        if step_score is not None:
            scores[group.name] = step_score.abs()
    return scores


@torch.no_grad()
def accumulate_taylor(model) -> None:
    """Fold this step's first-order scores (`taylor_step_scores`) into the moving average. Call it with the step's
    complete gradients, before any penalty touches them (under DDP they are all-reduced, so every rank gets the
    same scores). A step whose scores are not all finite (a NaN or inf loss or gradient) is not folded in at all,
    so one bad step cannot poison the scores that choose the masks for the rest of the run; it is counted in
    `skipped_score_steps`. The check stays on the device (no synchronisation per step)."""
    weight = 1.0 / model.wid_config.taylor_window
    scores = taylor_step_scores(model)
    if not scores:
        return
    finite = torch.stack([torch.isfinite(s).all() for s in scores.values()]).all()
    for name, step_score in scores.items():
        average = model.masks.score(name)
        average.copy_(torch.where(finite, average.mul(1.0 - weight).add_(step_score, alpha=weight), average))
    skipped = getattr(model, "_skipped_score_steps", None)
    if skipped is None or skipped.device != finite.device:
        skipped = model._skipped_score_steps = torch.zeros((), dtype=torch.long, device=finite.device)
    skipped.add_(~finite)


def skipped_score_steps(model) -> int:
    """How many steps of this process had non-finite scores, so were left out of the Taylor scores."""
    skipped = getattr(model, "_skipped_score_steps", None)
    return 0 if skipped is None else int(skipped)


def first_order_importance(model, batches, loss_fn) -> dict[str, torch.Tensor]:
    """Per group and index, summed over `batches` (``loss_fn(model, batch)`` gives each batch's loss): the
    first-order score ``|sum of G * W|`` of each compactor separately, summed over the group's compactors. At identity
    compactors that is ``|diagonal of each compactor's gradient|``, the first-order mask-gradient importance that
    ETD-Impt extracts by. Unlike a training step's Taylor score (one sum over every compactor of the group, then
    ``|.|``), the per-compactor values cannot cancel. Eval mode (no dropout); leaves no gradients behind and draws
    nothing from the RNG."""
    totals: dict[str, torch.Tensor] = {}
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            model.zero_grad(set_to_none=True)
            loss_fn(model, batch).backward()
            with torch.no_grad():
                for group in model.groups.values():
                    for gw in _first_order_terms(group):
                        score = gw.abs()
                        totals[group.name] = totals[group.name] + score if group.name in totals else score
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return totals


@torch.no_grad()
def initial_taylor_scores(model, batches, loss_fn) -> None:
    """Start the moving average of Taylor scores from the teacher's importance: `first_order_importance` over
    `batches`, averaged, before any training step (``WIDConfig.taylor_init_batches``), so the first selection can
    come early in a run instead of waiting for the average to build up."""
    batches = list(batches)
    if not batches:
        raise ValueError("initial_taylor_scores got no batches.")
    with torch.enable_grad():
        totals = first_order_importance(model, batches, loss_fn)
    for name, total in totals.items():
        model.masks.score(name).copy_(total / len(batches))


def target_pruned(model, group: MaskGroup) -> int:
    """How many indices `group` has pruned once pruning is over (its final target)."""
    return pruned_count(model.wid_config, model.teacher_dims, group.kind, model.pruning_end_step)


@torch.no_grad()
def prune_to_targets(model, scores: Optional[dict[str, torch.Tensor]] = None) -> None:
    """Bring every group that is not at its target there, from `scores` (name -> importance) or the groups' own
    importances. Groups already at their target keep their masks."""
    for group in model.groups.values():
        target = target_pruned(model, group)
        if scores is not None or group.size - model.masks.kept_count(group.name) != target:
            model.masks.set(group.name, select(model, group, target, None if scores is None else scores[group.name]))


@torch.no_grad()
def update_masks(model, step: int) -> None:
    """Recompute every group from scratch for optimizer step `step` (1-based): prune the scheduled number of
    lowest-importance indices. A no-op under hard masks (the masks are final)."""
    if model.masks.is_hard:
        return
    for group in model.groups.values():
        n = pruned_count(model.wid_config, model.teacher_dims, group.kind, step)
        model.masks.set(group.name, select(model, group, n))


@torch.no_grad()
def finalize_masks(model, optimizer: Optional[torch.optim.Optimizer] = None) -> None:
    """Prune every group to its target, switch to hard masks and zero pruned entries (and their optimizer state);
    then keep only the compactors' kept slices (`WIDModel.compact_compactors`, where enabled)."""
    if not model.masks.is_hard:
        prune_to_targets(model)
        model.masks.set_hard(True)
    zero_pruned(model, optimizer)
    model._compact_if_enabled(optimizer)


@torch.no_grad()
def zero_pruned(model, optimizer: Optional[torch.optim.Optimizer] = None) -> None:
    """Set every pruned entry, its pending gradient and (given an optimizer) its state to exactly zero."""
    state = getattr(optimizer, "state", {}) if optimizer is not None else {}
    for group in model.groups.values():
        kept = model.masks.get(group.name)
        for param, how in group.penalised_tensors():
            keep = broadcast_mask(kept, how).to(param.dtype)
            param.mul_(keep)
            if param.grad is not None:
                param.grad.mul_(keep.to(param.grad.dtype))
            for value in state.get(param, {}).values():
                if torch.is_tensor(value) and value.shape == param.shape:
                    value.mul_(keep.to(value.dtype))


@torch.no_grad()
def apply_penalty(model, step: int, optimizer: Optional[torch.optim.Optimizer] = None) -> None:
    """WID's sparsity penalty on the gradients of optimizer step `step` (1-based; docs/method.md, "The penalty").

    During the first interval every compactor gets an extra ``warmup_l2 * W``. Afterwards the gradient of each
    pruned entry is replaced by ``min(lambda, 1) * W`` and, with an Adam-type optimizer, its first moment is
    pushed by ``0.1 * (lambda - 1) * W``; kept entries keep their task gradient and moments. Nothing under hard
    masks: pruned entries are exactly zero and receive no gradient.
    """
    cfg = model.wid_config
    if model.masks.is_hard or _warmup_l2(model, step):
        return
    lam = cfg.penalty_lambda
    state = getattr(optimizer, "state", {}) if optimizer is not None else {}
    for group in model.groups.values():
        pruned = ~model.masks.get(group.name)
        for param, how in group.penalised_tensors():
            where = broadcast_mask(pruned, how)
            if param.grad is not None:
                param.grad.copy_(torch.where(where, min(lam, 1.0) * param.detach(), param.grad))
            exp_avg = state.get(param, {}).get("exp_avg")
            if lam > 1 and exp_avg is not None:
                pushed = 0.9 * exp_avg + (0.1 * (lam - 1)) * param.detach()
                exp_avg.copy_(torch.where(where, pushed, exp_avg))


@torch.no_grad()
def apply_decay(model, step: int, optimizer: Optional[torch.optim.Optimizer] = None) -> None:
    """``decay="linear"``: before optimizer step `step`, scale every pruned entry (compactor rows/columns and the
    group's LayerNorm and bias entries) by ``(T - step) / (T - step + 1)``, T the hard-mask step, and clear its
    gradient and optimizer state. Over the steps since an index was pruned these factors multiply to a linear
    ramp from its value then to exactly zero at T, whatever the learning rate, clipping or Adam state."""
    if model.masks.is_hard or _warmup_l2(model, step):
        return
    hard = model.hard_mask_step
    factor = max(0, hard - step) / max(1, hard - step + 1)
    state = getattr(optimizer, "state", {}) if optimizer is not None else {}
    for group in model.groups.values():
        pruned = ~model.masks.get(group.name)
        if not bool(pruned.any()):
            continue
        for param, how in group.penalised_tensors():
            where = broadcast_mask(pruned, how)
            param.copy_(torch.where(where, param * factor, param))
            if param.grad is not None:
                param.grad.masked_fill_(where, 0.0)
            for value in state.get(param, {}).values():
                if torch.is_tensor(value) and value.shape == param.shape:
                    value.masked_fill_(where, 0.0)


def _warmup_l2(model, step: int) -> bool:
    """During the first interval of the schedule, the extra L2 gradient on every compactor; True while in it."""
    cfg = model.wid_config
    if step > cfg.pruning_start + cfg.mask_interval:
        return False
    if cfg.warmup_l2:
        for param in model.compactor_parameters():
            if param.grad is not None:
                param.grad.add_(param.detach(), alpha=cfg.warmup_l2)
    return True


def wid_step(model, step: int, optimizer: Optional[torch.optim.Optimizer] = None) -> None:
    """Everything WID does before optimizer step `step`, once its gradients are complete and clipped: re-select
    the masks at every interval, switch to hard masks at `hard_mask_step`, apply the penalty."""
    cfg = model.wid_config
    if not model.masks.is_hard:
        if cfg.mask_scoring == "taylor":
            accumulate_taylor(model)
        if model.hard_mask_step is not None and step >= model.hard_mask_step:
            # what the decay left just before zeroing: large values mean hard masking is a cliff (logged once)
            model.pruned_norm_before_hard_masks = sum(v**2 for v in pruned_norms(model).values()) ** 0.5
            finalize_masks(model, optimizer)
        elif is_update_step(cfg, step):
            update_masks(model, step)
    if cfg.decay == "linear":
        apply_decay(model, step, optimizer)
    else:
        apply_penalty(model, step, optimizer)


@torch.no_grad()
def pruned_norms(model) -> dict[str, float]:
    """L2 norm of the pruned compactor entries of every group (goes to zero as the penalty works)."""
    out = {}
    for group in model.groups.values():
        pruned = ~model.masks.get(group.name)
        total = 0.0
        for param, how in group.compactor_entries():
            total += float((param * broadcast_mask(pruned, how)).float().square().sum())
        out[group.name] = total**0.5
    return out
