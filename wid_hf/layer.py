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
    forward; they are dropped whenever a mask changes or a state dict is loaded.
    """

    def __init__(self, group_sizes: dict[str, int], device=None, scores: bool = False):
        super().__init__()
        for name, size in group_sizes.items():
            self.register_buffer(name, torch.ones(size, dtype=torch.bool, device=device))
            if scores:  # importance accumulated over steps (Taylor scoring): part of the state, for exact resume
                self.register_buffer(f"score_{name}", torch.zeros(size, dtype=torch.float32, device=device))
        self.register_buffer("hard", torch.zeros((), dtype=torch.bool, device=device))
        self.group_names = tuple(group_sizes)
        self._cache: dict = {}

    def score(self, group: str) -> torch.Tensor:
        """The accumulated importance of a group's indices (only with Taylor scoring)."""
        return getattr(self, f"score_{group}")

    def get(self, group: str) -> torch.Tensor:
        return getattr(self, group)

    def set(self, group: str, kept: torch.Tensor) -> None:
        buf = self.get(group)
        buf.copy_(kept.to(device=buf.device, dtype=torch.bool))
        self._cache.clear()

    def set_hard(self, value: bool) -> None:
        self.hard.fill_(bool(value))
        self._cache.clear()

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
        mask = self.get(group)
        key = ("index", group, mask.device)
        if key not in self._cache:
            self._cache[key] = mask.nonzero().flatten()
        return self._cache[key]

    def kept_count(self, group: str) -> int:
        return int(self.kept_index(group).numel())

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._cache.clear()

    def _apply(self, fn, *args, **kwargs):
        self._cache.clear()
        return super()._apply(fn, *args, **kwargs)


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
    the output through its rows. The effective weight ``R·W·L`` and bias ``R·b`` are formed once per forward, never
    per token. Either side may be absent (the decoder has no output compactor: the vocabulary is never pruned).
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

    def effective_weight_and_bias(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The dense (out×in) weight and bias this layer applies now; hard masks zero pruned rows/columns."""
        weight, bias = self.base_layer.weight, self.base_layer.bias
        left, right = self.compactor_in, self.compactor_out
        if self._wid_masks.is_hard:
            if left is not None:
                left = left * self._mask(self.in_group, left.dtype)
            if right is not None:
                m = self._mask(self.out_group, right.dtype)
                right = right * m[:, None]
                bias = bias * m if bias is not None else None
        if left is not None:
            weight = weight @ left
        if right is not None:
            weight = right @ weight
            bias = right @ bias if bias is not None else None
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.effective_weight_and_bias()
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return f"in_group={self.in_group}, out_group={self.out_group}"


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        masks, ln = self._wid_masks, self.base_layer
        if masks.is_complete(self.group):
            return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
        weight, bias = self.effective_weight_and_bias()
        kept = x.index_select(-1, masks.kept_index(self.group))
        var, mean = torch.var_mean(kept, dim=-1, keepdim=True, correction=0)
        return (x - mean) * torch.rsqrt(var + ln.eps) * weight + bias


class EmbeddingCompactor(_MaskUser):
    """Replaces ``embeddings.LayerNorm``: applies the H×H embedding compactor ``C`` to the summed word + position +
    token-type embedding, then the masked LayerNorm of the hidden group. ``C`` writes the stream through its rows.
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
        if self._wid_masks.is_hard:
            c = c * self._mask(self.group, c.dtype)[:, None]
        return c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.effective_compactor()
        return self.norm(F.linear(x, c))


def _identity(n: int, like: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(torch.eye(n, dtype=like.dtype, device=like.device))
