"""The masked-LM loss computed where it is defined: the MLM head (transform + vocabulary decoder, about half the
training FLOPs of a MiniLM-sized model) runs at the masked positions only, not at every token.

Used by `WIDTrainer`, by `DistillationTrainer` (every plain student the library trains, so comparisons stay fair)
and by the held-out evaluation. The loss and its gradients are those of ``model(**inputs, labels=labels).loss``;
only the ~85% of head work whose logits the loss never reads is skipped.

    >>> with mlm_head_at(model, labels != -100):            # doctest: +SKIP
    ...     logits = model(input_ids=ids).logits              # (masked positions, vocabulary)
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .utils import unwrap_model


def mlm_head(model: nn.Module) -> Optional[nn.Module]:
    """The ``cls`` head of a BertForMaskedLM, seen through DDP/accelerate/torch.compile wrappers and a `WIDModel`;
    None if the model has no masked-LM head."""
    from .model import WIDModel

    model = unwrap_model(model)
    if isinstance(model, WIDModel):
        model = model.base_model
    if type(model).__name__ != "BertForMaskedLM":
        return None
    return model.cls


@contextmanager
def mlm_head_at(model: nn.Module, positions: torch.Tensor):
    """Within the block, `model`'s MLM head reads only `positions` (bool, batch x seq): ``logits`` come out as
    (number of positions x vocabulary), in row-major order of `positions`. Call the model *without* labels (its own
    loss would expect every position). The model is still called through its own forward, so DDP works."""
    head = mlm_head(model)
    if head is None:
        raise TypeError(f"{type(model).__name__} has no BERT masked-LM head")

    # the positions' row-major indices, found here, outside the model: under torch.compile a boolean index inside the
    # forward would break the graph (its size depends on the data); an index of a given length only makes it dynamic
    index = positions.flatten().nonzero().squeeze(1)

    def gather(module, args):
        hidden = args[0]
        return (hidden.flatten(0, -2).index_select(0, index.to(hidden.device)),) + tuple(args[1:])

    handle = head.register_forward_pre_hook(gather)
    try:
        yield
    finally:
        handle.remove()


def masked_lm_loss(model: nn.Module, inputs: dict, reduction: str = "mean", **forward_kwargs):
    """``(loss, outputs)``: the masked-LM cross-entropy of `model` on `inputs` (with ``labels``, -100 = ignored),
    the head run at the labelled positions only. ``outputs.logits`` holds those positions' logits;
    `reduction` as for `F.cross_entropy` ("sum" lets a caller normalise over an accumulated batch)."""
    labels = inputs["labels"]
    picked = labels != -100
    with mlm_head_at(model, picked):
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"}, **forward_kwargs)
    logits = outputs.logits
    target = labels[picked].to(logits.device)
    if target.numel() == 0:  # nothing masked in this micro-batch: a zero loss that still touches the graph
        return logits.sum() * 0.0, outputs
    return F.cross_entropy(logits.float(), target, reduction=reduction), outputs


def warn_if_cuda_graphs(trainer) -> None:
    """Warn (once per trainer) when a Trainer compiles with CUDA graphs, measured slow with the head at masked
    positions."""
    mode = getattr(trainer.args, "torch_compile_mode", None) or ""
    if getattr(trainer, "_warned_cuda_graphs", False):
        return
    trainer._warned_cuda_graphs = True
    if trainer.args.torch_compile and ("reduce-overhead" in mode or mode == "max-autotune"):
        warnings.warn(
            f"torch_compile_mode={mode!r} records CUDA graphs. With the masked-LM head at masked positions a training "
            "step under CUDA graphs was measured 9x slower than under the default mode (H200, BERT-base, 8x128: "
            "0.207 s against 0.023 s; benchmarks/step_speed.py --compile, README 'Cost'). Leave torch_compile_mode "
            "unset (or use 'max-autotune-no-cudagraphs').", stacklevel=3)


class MaskedHeadLossMixin:
    """Mix into a `transformers.Trainer` subclass (before Trainer): training batches with ``labels`` take their
    masked-LM loss from `masked_lm_loss` (a mean per micro-batch, as the model's own loss); evaluation, models
    without an MLM head and custom losses keep Trainer's path."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False  # a per-micro-batch mean: Trainer divides by the accumulation steps
        warn_if_cuda_graphs(self)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None, **kwargs):
        if (return_outputs or "labels" not in inputs or mlm_head(model) is None or self.label_smoother is not None
                or self.compute_loss_func is not None):
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch, **kwargs)
        return masked_lm_loss(model, inputs)[0]
