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
   complete exactly when that file parses and names step N and the other files it needs are there (under DDP, every
   rank's RNG state). The mixin writes a marker (`CHECKPOINT_MARKER`) into each checkpoint before anything else, so
   `last_complete_checkpoint` knows which folders wid_hf wrote: an incomplete one of those is removed (it is the
   leftover of a kill), any other folder that does not look complete (a `save_only_model`, sharded, DeepSpeed,
   FSDP or PEFT checkpoint of the user's own run) is skipped with one line and never touched. The mixin's
   `train(resume_from_checkpoint=True)` uses it.

    >>> from wid_hf.resume import last_complete_checkpoint
    >>> last_complete_checkpoint("runs/demo/checkpoints")       # doctest: +SKIP
    'runs/demo/checkpoints/checkpoint-100'
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
from typing import Callable, Optional

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .job_directory import first_line

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"
# Written first into every checkpoint folder wid_hf's trainers write: only such folders are ever deleted.
CHECKPOINT_MARKER = "wid_hf_checkpoint.json"
# What resuming reads besides the trainer state; the weights file is either name, by trainer and format.
_NEEDED = ("optimizer.pt", "scheduler.pt")
_WEIGHTS = ("model.safetensors", "wid_model.safetensors", "pytorch_model.bin")
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def _marker(path: str) -> Optional[dict]:
    """The marker wid_hf wrote into a checkpoint folder, or None for a folder some other program wrote."""
    try:
        with open(os.path.join(path, CHECKPOINT_MARKER)) as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def written_by_wid_hf(path: str) -> bool:
    """Whether a `checkpoint-N` folder was written by one of wid_hf's trainers (it holds `CHECKPOINT_MARKER`)."""
    return _marker(path) is not None


def checkpoint_step(path: str) -> Optional[int]:
    """The global step a complete checkpoint folder was written at, or None when it is incomplete."""
    match = _CHECKPOINT.match(os.path.basename(os.path.normpath(path)))
    if not match or not os.path.isdir(path):
        return None
    try:
        with open(os.path.join(path, TRAINER_STATE)) as f:
            step = json.load(f)["global_step"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    files = set(os.listdir(path))
    if step != int(match.group(1)) or not files & set(_WEIGHTS) or not all(n in files for n in _NEEDED):
        return None
    marker = _marker(path)
    world_size = int(marker.get("world_size", 1)) if marker else 1
    if marker and world_size > 1:
        # under DDP each rank writes its own RNG state, and rank 0 writes the trainer state without waiting for them
        if not all(f"rng_state_{rank}.pth" in files for rank in range(world_size)):
            return None
    elif not any(n.startswith("rng_state") for n in files):
        return None
    return step


def last_complete_checkpoint(directory: str, say: Callable[[str], None] = logger.warning,
                             remove_incomplete: bool = True) -> Optional[str]:
    """The newest complete `checkpoint-N` under `directory` (None if there is none). An incomplete one that wid_hf
    wrote (a kill during its write) is reported with one line through `say` and, by default, removed so that
    checkpoint rotation never keeps it in place of a good one; a folder wid_hf did not write is only reported,
    never removed."""
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
        elif not written_by_wid_hf(path):
            say(f"skipping {path}: not a complete checkpoint written by wid_hf (left as it is)")
        elif best is None:  # only newer-than-the-last-good ones can be half-written leftovers of a kill
            say(f"ignoring incomplete {path} (interrupted while it was written)")
            if remove_incomplete:
                shutil.rmtree(path, ignore_errors=True)
    return best


def remove_own_checkpoints(directory: str) -> None:
    """Delete the `checkpoint-N` folders under `directory` that wid_hf wrote (once a final model is saved)."""
    if not os.path.isdir(directory):
        return
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if _CHECKPOINT.match(name) and written_by_wid_hf(path):
            shutil.rmtree(path, ignore_errors=True)


def rotate_own_checkpoints(directory: str, save_total_limit: Optional[int], best: Optional[str] = None) -> None:
    """Keep the newest `save_total_limit` complete checkpoints wid_hf wrote under `directory` (and `best`); delete
    its older ones. Folders it did not write are never counted nor deleted (Trainer's own rotation deletes any
    ``checkpoint-N``, a user's included)."""
    if not save_total_limit or save_total_limit <= 0:
        return
    own = sorted((step, path) for path in (os.path.join(directory, n) for n in os.listdir(directory)
                                           if _CHECKPOINT.match(n))
                 if written_by_wid_hf(path) for step in [checkpoint_step(path)] if step is not None)
    if len(own) <= save_total_limit:
        return
    protected = {own[-1][1]} | ({os.path.normpath(best)} if best else set())
    remaining = len(own)
    for _, path in own:
        if remaining <= max(save_total_limit, len(protected)):
            break
        if os.path.normpath(path) not in protected:
            shutil.rmtree(path, ignore_errors=True)
            remaining -= 1


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, most often); the previous one is intact."""


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

    def _save_checkpoint(self, model, trial):
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        limit = self.args.save_total_limit
        try:
            if self.args.should_save:
                # first, so that a kill at any later point leaves a folder resume knows it may delete
                os.makedirs(folder, exist_ok=True)
                write_json_atomically(os.path.join(folder, CHECKPOINT_MARKER),
                                      {"writer": "wid_hf", "world_size": self.args.world_size})
            self.args.save_total_limit = None  # Trainer's rotation deletes any checkpoint-N folder; ours only its own
            super()._save_checkpoint(model, trial)
        except Exception as err:  # noqa: BLE001 - torch.save reports a full disk as a RuntimeError
            if self.args.should_save and written_by_wid_hf(folder):
                shutil.rmtree(folder, ignore_errors=True)
            # rotation runs only after a complete write, so the newest complete checkpoint is still there
            previous = last_complete_checkpoint(os.path.dirname(folder), say=lambda _: None, remove_incomplete=False)
            kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
            raise CheckpointWriteError(
                f"Could not write the checkpoint {folder} ({first_line(err)}); {kept}. Free disk space (or fix the "
                "cause) and run the same command again to resume.") from err
        finally:
            self.args.save_total_limit = limit
        if self.args.should_save:
            rotate_own_checkpoints(os.path.dirname(folder), limit, self.state.best_model_checkpoint)

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
    """Write `data` as JSON to a temp file, fsync it and rename it over `path`: a reader sees the old file or the new
    one, never a torn write (a kill, a full disk or a power cut mid-write)."""
    tmp = path + ".incomplete"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise

