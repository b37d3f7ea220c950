"""Exact, kill-safe resumption for every Trainer wid_hf ships (`WIDTrainer`, the distillation baselines).

Two things stand between `transformers.Trainer` (5.x) and a resumed run that equals an uninterrupted one:

1. `DataCollatorForLanguageModeling` draws its 15% masks from the global RNG inside the DataLoader, and accelerate's
   DataLoader prefetches one batch: the masks of batch k+1 are drawn before step k's checkpoint saves the RNG, so a
   resumed run masks every later batch differently (measured: a 60-step CLI job resumed at checkpoint-20 ended 0.84,
   max abs weight, away from the uninterrupted student). `ExactResumeMixin` moves the masking of such a collator's
   training batches to the training step (`MaskAtTrainingStep`): the DataLoader only pads, and the masks are drawn
   from the RNG where dropout draws, in step order, after Trainer has restored the checkpoint's RNG states.
2. A kill in the middle of a checkpoint write leaves a `checkpoint-N` folder that `get_last_checkpoint` still picks.
   Trainer writes `trainer_state.json` last (after weights, optimizer, scheduler and RNG states), so a checkpoint is
   complete exactly when that file parses and names step N and the other files it needs are there.
   `last_complete_checkpoint` skips (and removes) incomplete ones, and the mixin's `train(resume_from_checkpoint=True)`
   uses it.

    >>> from wid_hf.resume import last_complete_checkpoint
    >>> last_complete_checkpoint("runs/demo/checkpoints")       # doctest: +SKIP
    'runs/demo/checkpoints/checkpoint-100'
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
from typing import Callable, Optional

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"
# What resuming reads besides the trainer state; the weights file is either name, by trainer and format.
_NEEDED = ("optimizer.pt", "scheduler.pt")
_WEIGHTS = ("model.safetensors", "wid_model.safetensors", "pytorch_model.bin")
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def checkpoint_step(path: str) -> Optional[int]:
    """The global step a complete checkpoint folder was written at, or None when it is incomplete."""
    match = _CHECKPOINT.match(os.path.basename(os.path.normpath(path)))
    if not match or not os.path.isdir(path):
        return None
    try:
        with open(os.path.join(path, TRAINER_STATE)) as f:
            step = json.load(f)["global_step"]
    except (OSError, ValueError, KeyError):
        return None
    files = set(os.listdir(path))
    if step != int(match.group(1)) or not files & set(_WEIGHTS) or not all(n in files for n in _NEEDED):
        return None
    if not any(n.startswith("rng_state") for n in files):
        return None
    return step


def last_complete_checkpoint(directory: str, say: Callable[[str], None] = logger.warning,
                             remove_incomplete: bool = True) -> Optional[str]:
    """The newest complete `checkpoint-N` under `directory` (None if there is none). Incomplete ones (a kill during
    their write) are reported with one line each through `say` and, by default, removed so that checkpoint rotation
    never keeps them in place of a good one."""
    if not os.path.isdir(directory):
        return None
    found = []
    for name in os.listdir(directory):
        match = _CHECKPOINT.match(name)
        if match:
            found.append((int(match.group(1)), os.path.join(directory, name)))
    best = None
    for _, path in sorted(found, reverse=True):
        if checkpoint_step(path) is not None:
            best = best or path
        elif best is None:  # only newer-than-the-last-good ones can be half-written leftovers of a kill
            say(f"ignoring incomplete {path} (interrupted while it was written)")
            if remove_incomplete:
                shutil.rmtree(path, ignore_errors=True)
    return best


class MaskAtTrainingStep:
    """Wraps a masked-LM `DataCollatorForLanguageModeling`: called by the DataLoader it only pads (no RNG drawn);
    `mask(batch)` then draws the masks (80/10/10, the collator's own probability and rules) at the training step."""

    def __init__(self, collator):
        self.collator = collator
        self._pad = dataclasses.replace(collator, mlm=False)

    def __call__(self, examples):
        batch = self._pad(examples)
        batch.pop("labels", None)
        return batch

    def mask(self, batch: dict) -> dict:
        ids = batch["input_ids"]
        masked, labels = self.collator.torch_mask_tokens(ids.cpu())
        return {**batch, "input_ids": masked.to(ids.device), "labels": labels.to(ids.device)}


def _masks_in_dataloader(collator) -> bool:
    from transformers import DataCollatorForLanguageModeling

    return (isinstance(collator, DataCollatorForLanguageModeling) and collator.mlm and collator.seed is None
            and type(collator).torch_mask_tokens is DataCollatorForLanguageModeling.torch_mask_tokens)


class ExactResumeMixin:
    """Mix into a `transformers.Trainer` subclass (before Trainer) to make resumption exact and kill-safe."""

    _step_masker: Optional[MaskAtTrainingStep] = None

    def get_train_dataloader(self):
        collator = self.data_collator
        if not _masks_in_dataloader(collator):
            return super().get_train_dataloader()
        self._step_masker = self.data_collator = MaskAtTrainingStep(collator)
        try:
            return super().get_train_dataloader()
        finally:
            self.data_collator = collator  # evaluation keeps masking in its DataLoader (its batches need labels)

    def _prepare_inputs(self, inputs):
        if self._step_masker is not None and "labels" not in inputs:
            inputs = self._step_masker.mask(inputs)
        return super()._prepare_inputs(inputs)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No complete checkpoint to resume from in {self.args.output_dir}.")
        return super().train(resume_from_checkpoint, *args, **kwargs)


def resumable_trainer_class():
    """`transformers.Trainer` with `ExactResumeMixin` (for plain training, e.g. the teacher's MLM warm-up) and the
    masked-LM loss at masked positions only (`wid_hf.mlm`)."""
    from transformers import Trainer

    from .mlm import MaskedHeadLossMixin

    return type("ResumableTrainer", (ExactResumeMixin, MaskedHeadLossMixin, Trainer),
                {"__doc__": "Trainer with exact, kill-safe resume and the MLM head at masked positions only."})


def save_pretrained_atomically(path: str, *objects) -> None:
    """`save_pretrained` each object (a model, its tokenizer) into a sibling temp folder, then move it to `path` in one
    rename: a kill leaves the old `path` (or none) or the complete new one, never a half-written folder that a rerun
    would trust."""
    tmp = path.rstrip(os.sep) + ".incomplete"
    shutil.rmtree(tmp, ignore_errors=True)
    for obj in objects:
        obj.save_pretrained(tmp)
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.replace(tmp, path)


def write_json_atomically(path: str, data) -> None:
    tmp = path + ".incomplete"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)
