"""Mask groups: which compactor rows/columns, LayerNorm entries and biases are pruned together, how a group is
scored, and how the kept set is chosen (docs/method.md, "Mask groups" and "Heads").

A group only *references* modules of the injected model; its kept/pruned state is the bool buffer of the same
name in `WIDMasks`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch

from .layer import EmbeddingCompactor, WIDLinear


@dataclass(eq=False)
class MaskGroup:
    """One set of indices pruned together.

    `readers` read the group's dims through their input compactor's columns; `writers` write them through their
    output compactor's rows and own the bias entries of those dims; `norms` are LayerNorms over the group's dims;
    `embeddings` is the embedding compactor (rows) for the hidden group.
    """

    name: str
    kind: str
    size: int
    block_size: Optional[int] = None  # head size for hidden/attention groups, None for the others
    readers: list = field(default_factory=list)
    writers: list = field(default_factory=list)
    norms: list = field(default_factory=list)
    embeddings: list = field(default_factory=list)
    score_source: Optional[tuple] = None  # (module, "in" | "out") used by the reference scoring

    def add(self, module, role: str) -> None:
        getattr(self, role).append(module)

    # ------------------------------------------------------------------ scoring
    def scores(self, mode: str = "reference") -> torch.Tensor:
        """Importance of every index: L2 norm of the scoring compactor's columns (input side) or rows (output
        side); with ``mode="aggregate"`` the root of the summed squared norms of every compactor in the group."""
        with torch.no_grad():
            if mode == "reference" and self.score_source is not None:
                module, side = self.score_source
                return _norms(module, side)
            total = None
            for module, side in self._compactors():
                sq = _norms(module, side).square()
                total = sq if total is None else total + sq
            return total.sqrt()

    def _compactors(self) -> Iterator[tuple]:
        for m in self.readers:
            yield m, "in"
        for m in self.writers:
            yield m, "out"
        for m in self.embeddings:
            yield m, "out"

    # ------------------------------------------------------------------ what is pruned
    def penalised_tensors(self) -> Iterator[tuple[torch.nn.Parameter, str]]:
        """Every parameter with entries in this group, and how the group's mask lays over it:
        "cols" (mask over columns), "rows" (mask over rows) or "vec" (1-D entries). Compacted compactors (hard
        masks, `WIDModel.compact_compactors`) hold kept entries only and are left out: nothing of theirs is pruned."""
        for m in self.readers:
            if m.compactor_in.shape[1] == self.size:
                yield m.compactor_in, "cols"
        for m in self.writers:
            if m.compactor_out.shape[0] == self.size:
                yield m.compactor_out, "rows"
            if m.base_layer.bias is not None:
                yield m.base_layer.bias, "vec"
        for m in self.embeddings:
            if m.compactor.shape[0] == self.size:
                yield m.compactor, "rows"
        for m in self.norms:
            yield m.base_layer.weight, "vec"
            yield m.base_layer.bias, "vec"

    def compactor_entries(self) -> Iterator[tuple[torch.nn.Parameter, str]]:
        return ((p, how) for p, how in self.penalised_tensors() if how != "vec")


def _norms(module, side: str) -> torch.Tensor:
    if isinstance(module, WIDLinear):
        weight = module.compactor_in if side == "in" else module.compactor_out
    elif isinstance(module, EmbeddingCompactor):
        weight = module.compactor
    else:
        raise TypeError(f"cannot score {type(module).__name__}")
    return torch.linalg.vector_norm(weight.detach().float(), dim=0 if side == "in" else 1)


def broadcast_mask(mask: torch.Tensor, how: str) -> torch.Tensor:
    """Lay a 1-D group mask over a tensor per `penalised_tensors`' convention."""
    if how == "cols":
        return mask[None, :]
    if how == "rows":
        return mask[:, None]
    return mask


def select_kept(
    scores: torch.Tensor, n_pruned: int, *, block_size: Optional[int] = None, whole_blocks: bool = False
) -> torch.Tensor:
    """Bool mask (True = kept) pruning the `n_pruned` lowest-scoring indices.

    - ``block_size=None``: the lowest indices over the whole group.
    - ``block_size=h, whole_blocks=False`` ("dim"): the same number from every block of h, the lowest in each.
    - ``block_size=h, whole_blocks=True`` ("head"): whole blocks, ranked by their summed scores.

    Ties are broken by index (a stable sort), so every process computes the same mask from the same weights.
    """
    size = scores.numel()
    kept = torch.ones(size, dtype=torch.bool, device=scores.device)
    if n_pruned <= 0:
        return kept
    if n_pruned > size:
        raise ValueError(f"cannot prune {n_pruned} of {size} indices")
    scores = scores.detach().float()
    if block_size is None:
        kept[torch.argsort(scores, stable=True)[:n_pruned]] = False
        return kept
    if size % block_size or n_pruned % (block_size if whole_blocks else size // block_size):
        raise ValueError(f"{n_pruned} pruned indices do not split evenly over blocks of {block_size} in {size}")
    blocks = scores.view(-1, block_size)
    if whole_blocks:
        worst = torch.argsort(blocks.sum(dim=1), stable=True)[: n_pruned // block_size]
        kept.view(-1, block_size)[worst] = False
        return kept
    per_block = n_pruned // blocks.shape[0]
    worst = torch.argsort(blocks, dim=1, stable=True)[:, :per_block]
    kept.view(-1, block_size).scatter_(1, worst, False)
    return kept

