"""The layers WID injects: compactor-wrapped linears, the embedding compactor and the masked LayerNorm.

Each wrapper keeps the teacher's module as ``base_layer`` (PEFT's tuner-layer convention) and reuses its tensors;
only the square compactors are new. Masks are not owned by the layers: they live in one `WIDMasks` module on the
`WIDModel` (so `.to()`, DDP buffer broadcast and `state_dict` see each mask exactly once) and layers look their
group up by name at forward time.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class WIDMasks(nn.Module):
    """The kept/pruned state of every mask group: one bool buffer per group (True = kept), plus the hard flag,
    and (Taylor scoring) one float buffer of accumulated importance per group.

    Python-side caches (kept indices, whether a group is complete, the hard flag) avoid a host-device sync per
    forward; they are rebuilt whenever a mask changes, a state dict is loaded or the buffers move, so a forward
    only reads them (and `torch.compile` traces it without breaking its graph at a ``.item()``).

    ``student_path`` (not saved; default True) chooses how the layers compute once masks are hard: on the student
    path every layer reads and writes only the kept dims, so the model runs at the student's widths (the same
    outputs and the same gradients for every parameter as the full path, which forms teacher-size products and
    multiplies the masks in). Set it False to run the full path, e.g. to compare the two.
    """

    student_path: bool = True
    # True while the compactors hold only their kept slices (`WIDModel.compact_compactors`; not saved: checkpoints
    # always hold whole compactors)
    compact: bool = False
    # set by `WIDModel.accumulating` for the micro-batches of one optimizer step (not saved): see `FoldReuse`
    fold_reuse: Optional["FoldReuse"] = None

    def __init__(self, group_sizes: dict[str, int], device=None, scores: bool = False):
        super().__init__()
        for name, size in group_sizes.items():
            self.register_buffer(name, torch.ones(size, dtype=torch.bool, device=device))
            if scores:  # importance accumulated over steps (Taylor scoring): part of the state, for exact resume
                self.register_buffer(f"score_{name}", torch.zeros(size, dtype=torch.float32, device=device))
        self.register_buffer("hard", torch.zeros((), dtype=torch.bool, device=device))
        self.group_names = tuple(group_sizes)
        self._cache: dict = {}
        self._refresh()

    def _refresh(self) -> None:
        """Drop the caches and fill them again from the buffers (not on the meta device, which holds no values)."""
        self._cache.clear()
        if self.hard.device.type == "meta":
            return
        self.is_hard
        for group in self.group_names:
            self.is_complete(group)
            self.kept_index(group)

    def score(self, group: str) -> torch.Tensor:
        """The accumulated importance of a group's indices (only with Taylor scoring)."""
        return getattr(self, f"score_{group}")

    def get(self, group: str) -> torch.Tensor:
        return getattr(self, group)

    def set(self, group: str, kept: torch.Tensor) -> None:
        buf = self.get(group)
        buf.copy_(kept.to(device=buf.device, dtype=torch.bool))
        self._refresh()

    def set_hard(self, value: bool) -> None:
        self.hard.fill_(bool(value))
        self._refresh()

    @property
    def is_hard(self) -> bool:
        if "hard" not in self._cache:
            self._cache["hard"] = bool(self.hard.item())
        return self._cache["hard"]

    def is_complete(self, group: str) -> bool:
        """True when the group has pruned nothing (all indices kept)."""
        key = ("complete", group)
        if key not in self._cache:
            self._cache[key] = bool(self.get(group).all().item())
        return self._cache[key]

    def kept_index(self, group: str) -> torch.Tensor:
        key = ("index", group)
        if key not in self._cache:
            self._cache[key] = self.get(group).nonzero().flatten()
        return self._cache[key]

    def kept_count(self, group: str) -> int:
        return int(self.kept_index(group).numel())

    @property
    def on_student_path(self) -> bool:
        """True when the layers run at the student's widths (hard masks and ``student_path``)."""
        return self.student_path and self.is_hard

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._refresh()

    def _apply(self, fn, *args, **kwargs):
        module = super()._apply(fn, *args, **kwargs)
        self._refresh()
        return module


class _MaskUser(nn.Module):
    """Base of the wrappers: holds a reference (not a submodule) to the model's `WIDMasks`."""

    def _attach_masks(self, masks: WIDMasks) -> None:
        # object.__setattr__ keeps the shared masks out of this module's children, state dict and .to().
        object.__setattr__(self, "_wid_masks", masks)

    def _mask(self, group: Optional[str], dtype: torch.dtype) -> Optional[torch.Tensor]:
        return None if group is None else self._wid_masks.get(group).to(dtype)

    def get_base_layer(self) -> nn.Module:
        return self.base_layer


class WIDLinear(_MaskUser):
    """``y = R · (W · (L · x) + b)`` for a teacher linear ``W, b`` with identity-initialised compactors.

    ``L`` (``compactor_in``, in×in) reads the input through its columns, ``R`` (``compactor_out``, out×out) writes
    the output through its rows. Either side may be absent (the decoder has no output compactor: the vocabulary is
    never pruned). Each forward computes the chain in its cheapest order for the number of tokens (`apply_chain`):
    usually the effective weight ``R·W·L`` is formed once per forward, but the MLM decoder applied to a few
    masked positions is cheaper token by token. On the student path (hard masks) only the kept rows of ``R`` and
    the kept columns of ``L`` take part (`student_factors`): the layer maps the kept input dims to the kept output
    dims, at the student's cost.
    """

    def __init__(self, base_layer: nn.Linear, masks: WIDMasks, in_group: Optional[str], out_group: Optional[str]):
        super().__init__()
        self.base_layer = base_layer
        self.in_group, self.out_group = in_group, out_group
        self._attach_masks(masks)
        w = base_layer.weight
        self.compactor_in = _identity(base_layer.in_features, w) if in_group else None
        self.compactor_out = _identity(base_layer.out_features, w) if out_group else None

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def full_factors(self) -> tuple[Optional[torch.Tensor], torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """``(R, W, L, b)`` on the full path: whole compactors, with pruned rows/columns (and bias entries) masked
        out once masks are hard."""
        weight, bias = self.base_layer.weight, self.base_layer.bias
        left, right = self.compactor_in, self.compactor_out
        _refuse_compact(self._wid_masks)
        if self._wid_masks.is_hard:
            if left is not None:
                left = left * self._mask(self.in_group, left.dtype)
            if right is not None:
                m = self._mask(self.out_group, right.dtype)
                right = right * m[:, None]
                bias = bias * m if bias is not None else None
        return right, weight, left, bias

    def effective_weight_and_bias(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The dense (out×in) weight ``R·W·L`` and bias ``R·b`` of the full path."""
        return fold_chain(*self.full_factors())

    def student_factors(self) -> tuple[Optional[torch.Tensor], torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """``(R', W, L', b)`` under the current masks: the kept rows of ``R`` (out'×out), the teacher weight, the
        kept columns of ``L`` (in×in') and the bias (under hard masks with pruned entries masked, as on the full path).
        ``R'·(W·L')`` and ``R'·b`` are exactly the kept block of the full path's effective weight and bias; the
        merge (`wid_hf.merge`) folds the same factors. Compacted compactors already are those slices."""
        masks = self._wid_masks
        weight, bias = self.base_layer.weight, self.base_layer.bias
        left, right = self.compactor_in, self.compactor_out
        if left is not None and not masks.compact:
            left = left.index_select(1, masks.kept_index(self.in_group))
        if right is not None:
            if not masks.compact:
                right = right.index_select(0, masks.kept_index(self.out_group))
            if bias is not None and masks.is_hard:  # as on the full path: pruned bias entries get no gradient
                bias = bias * self._mask(self.out_group, bias.dtype)
        return right, weight, left, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        masks = self._wid_masks
        factors = self.student_factors if masks.on_student_path else self.full_factors
        if masks.fold_reuse is not None and torch.is_grad_enabled():
            return masks.fold_reuse.linear(self, x, factors)
        return apply_chain(x, *factors())

    def extra_repr(self) -> str:
        return f"in_group={self.in_group}, out_group={self.out_group}"


def _shapes(right, weight, left) -> tuple[int, int, int, int]:
    """(out, in, out', in'): the teacher weight's shape and the kept widths the chain maps between."""
    out, inn = weight.shape
    return out, inn, right.shape[0] if right is not None else out, left.shape[1] if left is not None else inn


def _fold_costs(right, weight, left) -> tuple[int, int]:
    """Multiply-adds of forming ``(R·W)·L`` and ``R·(W·L)`` (absent factors cost nothing)."""
    out, inn, out_k, in_k = _shapes(right, weight, left)
    has_r, has_l = right is not None, left is not None
    rw_first = (out_k * out * inn if has_r else 0) + (out_k * inn * in_k if has_l else 0)
    wl_first = (out * inn * in_k if has_l else 0) + (out_k * out * in_k if has_r else 0)
    return rw_first, wl_first


def fold_chain(right, weight, left, bias):
    """``(R·W·L, R·b)`` with absent factors skipped, the two matrix products in the cheaper order."""
    rw_first, wl_first = _fold_costs(right, weight, left)
    if right is not None and left is not None:
        weight = (right @ weight) @ left if rw_first <= wl_first else right @ (weight @ left)
    elif left is not None:
        weight = weight @ left
    elif right is not None:
        weight = right @ weight
    if right is not None and bias is not None:
        bias = right @ bias
    return weight, bias


def chain_costs(tokens: int, right, weight, left) -> dict[str, int]:
    """Multiply-adds of the ways to compute ``R·(W·(L·x) + b)`` for `tokens` rows of x (forward; the backward
    scales alike): fold every factor into one weight, apply each per token, or fold ``W·L`` / ``R·W`` and apply
    the other compactor per token."""
    out, inn, out_k, in_k = _shapes(right, weight, left)
    has_r, has_l = right is not None, left is not None
    costs = {
        "fold": min(_fold_costs(right, weight, left)) + tokens * out_k * in_k,
        "tokens": tokens * ((inn * in_k if has_l else 0) + out * inn + (out_k * out if has_r else 0)),
    }
    if has_r and has_l:
        costs["fold_wl"] = out * inn * in_k + tokens * (out * in_k + out_k * out)
        costs["fold_rw"] = out_k * out * inn + tokens * (inn * in_k + out_k * inn)
    return costs


def cheapest(costs: dict[str, int]) -> str:
    """The first key of least cost (as ``min(costs, key=costs.get)``, written so torch.compile traces it without a
    graph break)."""
    best = None
    for plan, cost in costs.items():
        if best is None or cost < costs[best]:
            best = plan
    return best


def apply_chain(x: torch.Tensor, right, weight, left, bias) -> torch.Tensor:
    """``R·(W·(L·x) + b)`` in the order `chain_costs` finds cheapest for this many tokens."""
    tokens = x.numel() // x.shape[-1]
    costs = chain_costs(tokens, right, weight, left)
    plan = cheapest(costs)
    if plan == "fold":
        w, b = fold_chain(right, weight, left, bias)
        return F.linear(x, w, b)
    if plan == "fold_wl":
        return F.linear(F.linear(x, weight @ left, bias), right)
    if plan == "fold_rw":
        return F.linear(F.linear(x, left), right @ weight, right @ bias if bias is not None else None)
    if left is not None:
        x = F.linear(x, left)
    x = F.linear(x, weight, bias)
    return F.linear(x, right) if right is not None else x


class FoldReuse:
    """Forms each layer's effective weight ``R·W·L`` once per optimizer step under gradient accumulation.

    Without it every micro-batch folds every layer again, although the parameters (and masks) only change at the
    optimizer step, and the fold is per step, not per token (``2·F²·H`` multiply-adds for an FFN compactor pair).
    With it, the first micro-batch folds (keeping the fold's autograd graph) and every micro-batch multiplies by a
    detached copy whose gradient accumulates; the last micro-batch multiplies by the fold itself, and a hook adds
    the earlier micro-batches' gradient on its way back, so the compactors and inherited weights receive
    ``J^T (g_1 + ... + g_A)`` in the last backward: the gradients of plain accumulation, up to rounding (tested to
    1e-6), with the fold and its backward done once. Since the fold is paid once per step, the order is chosen with
    its cost shared by the step's micro-batches (the FFN layers of a MiniLM-sized model then fold instead of
    applying a compactor per token). All parameter gradients arrive in the last backward, which is
    the one DDP synchronises. Layers whose cheapest order is not a fold (the MLM decoder at masked positions) run as
    usual. Use it through `WIDModel.accumulating` (WIDTrainer does, when ``gradient_accumulation_steps > 1``).
    """

    def __init__(self, micro_batches: int = 1):
        self.entries: dict[nn.Module, list] = {}
        self.last = False
        self.micro_batches = max(int(micro_batches), 1)
        self.folds = 0  # folds formed (for tests and benchmarks)

    def linear(self, module: nn.Module, x: torch.Tensor, factors) -> torch.Tensor:
        entry = self.entries.get(module)
        if entry is None:
            right, weight, left, bias = factors()
            costs = chain_costs(x.numel() // x.shape[-1], right, weight, left)
            once = min(_fold_costs(right, weight, left))  # a full fold is now paid once per micro_batches
            costs["fold"] -= once - once // self.micro_batches
            if cheapest(costs) != "fold":
                return apply_chain(x, right, weight, left, bias)
            w, b = fold_chain(right, weight, left, bias)
            self.folds += 1
            entry = self.entries[module] = [(w, _detached_leaf(w)), (b, _detached_leaf(b)), False]
        (w, w_leaf), (b, b_leaf), hooked = entry
        if not self.last:
            return F.linear(x, w_leaf, b_leaf)
        if not hooked:  # once: the earlier micro-batches' gradient joins the last one's on the way into the fold
            for graph, leaf in ((w, w_leaf), (b, b_leaf)):
                if leaf is not None and leaf.grad is not None:
                    graph.register_hook(lambda g, extra=leaf.grad: g + extra)
            entry[2] = True
        return F.linear(x, w, b)


def _detached_leaf(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.detach().requires_grad_(t.requires_grad)


class MaskedLayerNorm(_MaskUser):
    """LayerNorm whose mean and variance are taken over the kept dims of its group only (HF numerics: biased
    variance, the teacher's eps). Pruned dims are normalised with the kept statistics and scaled by their own
    (decaying) weight; under hard masks they are exactly zero. With nothing pruned it is the teacher's LayerNorm.
    """

    def __init__(self, base_layer: nn.LayerNorm, masks: WIDMasks, group: str):
        super().__init__()
        self.base_layer = base_layer
        self.group = group
        self._attach_masks(masks)

    def effective_weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        weight, bias = self.base_layer.weight, self.base_layer.bias
        if self._wid_masks.is_hard:
            m = self._mask(self.group, weight.dtype)
            weight, bias = weight * m, bias * m
        return weight, bias

    def student_weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The kept entries of the weight and bias: the student's LayerNorm."""
        kept = self._wid_masks.kept_index(self.group)
        return self.base_layer.weight.index_select(0, kept), self.base_layer.bias.index_select(0, kept)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        masks, ln = self._wid_masks, self.base_layer
        if masks.on_student_path:  # x holds the kept dims only
            weight, bias = self.student_weight_and_bias()
            return F.layer_norm(x, weight.shape, weight, bias, ln.eps)
        if masks.is_complete(self.group):
            return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
        weight, bias = self.effective_weight_and_bias()
        kept = x.index_select(-1, masks.kept_index(self.group))
        var, mean = torch.var_mean(kept, dim=-1, keepdim=True, correction=0)
        return (x - mean) * torch.rsqrt(var + ln.eps) * weight + bias


class EmbeddingCompactor(_MaskUser):
    """Replaces ``embeddings.LayerNorm``: applies the H×H embedding compactor ``C`` to the summed word + position +
    token-type embedding, then the masked LayerNorm of the hidden group. ``C`` writes the stream through its rows;
    on the student path only its kept rows, so the stream leaves the embeddings at the student's width.
    """

    def __init__(self, base_layer: nn.LayerNorm, masks: WIDMasks, group: str):
        super().__init__()
        self.norm = MaskedLayerNorm(base_layer, masks, group)
        self.group = group
        self._attach_masks(masks)
        self.compactor = _identity(base_layer.normalized_shape[0], base_layer.weight)

    @property
    def base_layer(self) -> nn.LayerNorm:
        return self.norm.base_layer

    def effective_compactor(self) -> torch.Tensor:
        c = self.compactor
        _refuse_compact(self._wid_masks)
        if self._wid_masks.is_hard:
            c = c * self._mask(self.group, c.dtype)[:, None]
        return c

    def student_compactor(self) -> torch.Tensor:
        """The kept rows of ``C`` (H'×H): they write the student's hidden dims."""
        if self._wid_masks.compact:
            return self.compactor
        return self.compactor.index_select(0, self._wid_masks.kept_index(self.group))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.student_compactor() if self._wid_masks.on_student_path else self.effective_compactor()
        return self.norm(F.linear(x, c))


class StudentHeadSize:
    """Forward pre-hook on each self-attention module under ``head_strategy="dim"``: on the student path the
    query/key/value outputs hold A heads of h' kept dims, so they are split with h' instead of the teacher's h.
    The attention scores keep the teacher's 1/sqrt(h) scale, as the full path computes them (the merge folds the
    difference into the query; docs/method.md, "Heads"). Under ``"head"`` whole heads of h are kept and nothing
    needs changing."""

    def __init__(self, masks: WIDMasks, teacher_head_size: int, student_head_size: int):
        self.masks, self.teacher, self.student = masks, teacher_head_size, student_head_size

    def __call__(self, module: nn.Module, args) -> None:
        module.attention_head_size = self.student if self.masks.on_student_path else self.teacher


def _refuse_compact(masks: WIDMasks) -> None:
    if masks.compact:
        raise RuntimeError("The compactors hold only their kept slices (WIDModel.compact_compactors), so the full path "
                           "cannot run; call WIDModel.expand_compactors() first (setting student_path=False does).")


def _identity(n: int, like: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(torch.eye(n, dtype=like.dtype, device=like.device))
