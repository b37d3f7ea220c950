"""`WIDTrainer`: a drop-in `transformers.Trainer` that runs plain masked-LM training on a `WIDModel` while a thin
callback drives the compactor-sparsity schedule that lives on the model.

Example:
    >>> from wid_hf import WIDConfig, WIDTrainer, WIDTrainingArguments
    >>> args = WIDTrainingArguments("out", max_steps=10_000, compactor_learning_rate=5e-5)   # doctest: +SKIP
    >>> trainer = WIDTrainer(model=teacher, wid_config=WIDConfig.from_preset("wid55"), args=args,
    ...                      train_dataset=ds, data_collator=collator)                    # doctest: +SKIP
    >>> trainer.train(); trainer.save_student("student")                                   # doctest: +SKIP

Where things live: the *schedule* (mask interval, pruning length, penalty) is part of the method and of the saved
WID state, so it lives in `WIDConfig` and travels with every checkpoint; `WIDTrainingArguments` only adds the
optimisation knobs a Trainer needs (the compactor learning rate and weight decay, where to save the student).
"""

from __future__ import annotations

import itertools
import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Optional

import datasets
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.utils import can_return_loss, find_labels

from . import checkpoint
from .config import WIDConfig
from .mlm import masked_lm_loss, warn_if_cuda_graphs
from .model import WIDModel, get_wid_model
from .pruner import initial_taylor_scores, skipped_score_steps
from .resume import ExactResumeMixin
from .schedule import GROUP_KINDS
from .utils import unwrap_model

logger = logging.getLogger(__name__)


@dataclass
class WIDTrainingArguments(TrainingArguments):
    """`TrainingArguments` with WID's optimisation defaults (docs/method.md, "Optimisation") and two learning rates.

    ``learning_rate`` is the rate of the inherited teacher weights, biases and LayerNorms (reference 1e-6);
    ``compactor_learning_rate`` that of the compactors (reference 5e-5). Both follow the same warm-up/decay.
    """

    learning_rate: float = field(default=1e-6, metadata={"help": "Learning rate of the inherited teacher weights."})
    compactor_learning_rate: float = field(default=5e-5, metadata={"help": "Learning rate of the compactors."})
    compactor_weight_decay: Optional[float] = field(
        default=None, metadata={"help": "Weight decay of the compactors (default: weight_decay)."}
    )
    weight_decay: float = field(default=0.01, metadata={"help": "Weight decay (never on biases and LayerNorms)."})
    adam_epsilon: float = field(default=1e-6, metadata={"help": "Epsilon of AdamW (reference 1e-6)."})
    warmup_steps: float = field(
        default=0.01, metadata={"help": "Linear warm-up: steps, or a ratio of the total in [0, 1) (reference: 0.01)."}
    )
    prediction_loss_only: bool = field(
        default=True,
        metadata={"help": "Evaluate the masked-LM loss only (keeping vocabulary-sized logits costs a lot of memory)."},
    )
    wid_fold_once_per_step: bool = field(
        default=True,
        metadata={"help": "Under gradient accumulation, form each layer's effective weight once per optimizer step "
                          "instead of once per micro-batch (same gradients up to rounding)."},
    )
    save_student_to: Optional[str] = field(
        default=None, metadata={"help": "After training, merge and save the student here (save_pretrained)."}
    )


class WIDCallback(TrainerCallback):
    """Calls the model's schedule at the right point of every optimizer step. Holds no WID logic itself."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        wid = _unwrap_wid(model)
        end = wid.hard_mask_step or wid.pruning_end_step
        if state.max_steps and state.max_steps < end:
            message = (
                f"max_steps={state.max_steps} ends before the pruning schedule does (every mask reaches its target at "
                f"step {wid.pruning_end_step}, hard masks at step {end}): the merged student will not be exact. "
                "Train longer, or shorten the schedule (WIDConfig.mask_interval / pruning_intervals)."
            )
            warnings.warn(message, stacklevel=2)
            logger.warning(message)

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        # Gradients are accumulated, all-reduced, unscaled and clipped here; the optimizer has not stepped yet.
        _unwrap_wid(model).wid_step(state.global_step + 1, optimizer)


class WIDTrainer(ExactResumeMixin, Trainer):
    """A `transformers.Trainer` for WID. Same constructor, plus `wid_config`.

    Accepts a `WIDModel`, or a plain BERT model together with a `WIDConfig` (compactors are then injected). Builds
    the two optimizer groups of docs/method.md ("Optimisation"), starts Taylor scores from the teacher's when the
    config asks (``taylor_init_batches``: budget mode), drives the mask schedule and penalty through `WIDCallback`,
    computes the masked-LM loss normalised over the whole accumulated batch, saves and resumes the WID state in
    every checkpoint, and logs the kept widths (``wid/kept_*``), pruned fraction, pruned-entry norm and student
    size through ``report_to``.
    """

    def __init__(self, model=None, args: Optional[TrainingArguments] = None, *pargs, wid_config: Optional[WIDConfig] = None, **kwargs):
        if model is None:
            raise ValueError("WIDTrainer needs a model: a WIDModel, or a BERT model together with wid_config.")
        if not isinstance(model, WIDModel):
            if wid_config is None:
                raise ValueError(
                    f"Got a {type(model).__name__} without a wid_config. Pass wid_config=WIDConfig(...) to inject "
                    "compactors, or a model returned by get_wid_model()."
                )
            model = get_wid_model(model, wid_config)
        elif wid_config is not None and wid_config.resolve(model.teacher_dims) != model.wid_config:
            raise ValueError("The WIDModel was built with a different WIDConfig than the wid_config passed.")
        if args is None:
            args = WIDTrainingArguments(output_dir="tmp_wid_trainer")
        super().__init__(model, args, *pargs, **kwargs)
        warn_if_cuda_graphs(self)
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise ValueError(
                "WIDTrainer does not support DeepSpeed or FSDP: mask selection needs every compactor whole on every "
                "rank. Use DDP (torchrun / accelerate launch without a DeepSpeed or FSDP config)."
            )
        if self.args.fp16 and self.args.max_grad_norm <= 0:
            raise ValueError(
                "fp16 with max_grad_norm <= 0 leaves gradients scaled when WID's penalty is applied. Use bf16, or keep "
                "gradient clipping on (max_grad_norm > 0), which unscales them first."
            )
        base_class = type(self.model.base_model)
        # Trainer reads label names and loss support off the model class; WIDModel.forward takes **kwargs.
        if self.args.label_names is None:
            self.label_names = find_labels(base_class)
        self.can_return_loss = can_return_loss(base_class)
        self._is_mlm = base_class.__name__ == "BertForMaskedLM"
        # Our MLM loss is normalised by the number of masked tokens over the whole accumulated batch; other task
        # models average per micro-batch and Trainer must divide by the accumulation steps.
        self.model_accepts_loss_kwargs = self._is_mlm
        self.add_callback(WIDCallback())

    @property
    def wid_model(self) -> WIDModel:
        return self.model

    # ------------------------------------------------------------------ optimisation
    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        wid = _unwrap_wid(model if model is not None else self.model)
        compactor_ids = {id(p) for p in wid.compactor_parameters()}
        decay = set(self.get_decay_parameter_names(wid))
        lr_c = getattr(self.args, "compactor_learning_rate", self.args.learning_rate)
        wd_c = getattr(self.args, "compactor_weight_decay", None)
        wd_c = self.args.weight_decay if wd_c is None else wd_c
        groups = {"compactors": [], "decay": [], "no_decay": []}
        for name, p in wid.named_parameters():
            if not p.requires_grad:
                continue
            key = "compactors" if id(p) in compactor_ids else "decay" if name in decay else "no_decay"
            groups[key].append(p)
        param_groups = [
            {"params": groups["compactors"], "lr": lr_c, "weight_decay": wd_c},
            {"params": groups["decay"], "weight_decay": self.args.weight_decay},
            {"params": groups["no_decay"], "weight_decay": 0.0},
        ]
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, wid)
        self.optimizer = optimizer_cls([g for g in param_groups if g["params"]], **optimizer_kwargs)
        return self.optimizer

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.args.gradient_accumulation_steps > 1 and getattr(self.args, "wid_fold_once_per_step", True):
            # Trainer marks the last micro-batch of each optimizer step with sync_gradients
            with self.wid_model.accumulating(last=self.accelerator.sync_gradients,
                                             micro_batches=self.args.gradient_accumulation_steps):
                return super().training_step(model, inputs, num_items_in_batch)
        return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None, **kwargs):
        if (not self._is_mlm or "labels" not in inputs or self.label_smoother is not None or self.compute_loss_func
                or return_outputs):
            # evaluation with outputs (full logits), other task heads, custom losses: Trainer's own path
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        # the MLM head at the masked positions only (wid_hf.mlm): the same loss, a fraction of the head's cost
        loss, _ = masked_lm_loss(model, inputs, reduction="sum")
        if num_items_in_batch is None:
            loss = loss / inputs["labels"].ne(-100).sum().clamp(min=1)
        else:
            loss = loss / num_items_in_batch
            if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                loss = loss * self.accelerator.num_processes  # DDP averages gradients; the count is global
        return loss

    # ------------------------------------------------------------------ logging
    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs:  # training logs only, not eval
            logs.update(wid_metrics(self.wid_model))
            skipped, warned = int(logs.get("wid/skipped_score_steps", 0)), getattr(self, "_skipped_warned", 0)
            if skipped > warned:
                logger.warning("%d training step(s) since the last log had a non-finite loss or gradient; their "
                               "Taylor scores were left out of the masks' choice (%d so far). Lower the learning "
                               "rate, or use bf16 instead of fp16, if this repeats.", skipped - warned, skipped)
                self._skipped_warned = skipped
            before_hard = getattr(self.wid_model, "pruned_norm_before_hard_masks", None)
            if before_hard is not None:
                logs["wid/pruned_norm_before_hard_masks"] = float(before_hard)
                self.wid_model.pruned_norm_before_hard_masks = None
        super().log(logs, *args, **kwargs)

    # ------------------------------------------------------------------ checkpoints
    def _set_signature_columns_if_needed(self):
        # Keep the dataset columns the *wrapped* BERT accepts (WIDModel.forward takes **kwargs).
        if self._signature_columns is None:
            import inspect

            params = inspect.signature(self.wid_model.base_model.forward).parameters
            self._signature_columns = list(params) + list({"label", "label_ids", *self.label_names})

    def _save(self, output_dir: Optional[str] = None, state_dict=None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        self.wid_model.save_pretrained(output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None and self.optimizer is not None:
            # a run saved with whole compactors resumed with compacted ones (or the reverse, e.g. under DDP)
            self.wid_model.fit_optimizer_state(self.optimizer)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        self._load_wid_state(resume_from_checkpoint)

    def _load_best_model(self):
        self._load_wid_state(self.state.best_model_checkpoint)

    def _load_wid_state(self, directory: str) -> None:
        names = (checkpoint.CONFIG_NAME, checkpoint.WEIGHTS_NAME)
        if not all(os.path.isfile(os.path.join(directory, name)) for name in names):
            raise ValueError(f"{directory} is not a WIDTrainer checkpoint (no {' / '.join(names)}). Resume from a "
                             "checkpoint-N folder written by WIDTrainer.")
        meta = checkpoint.read_wid_config(directory)
        saved = WIDConfig.from_dict(meta["wid_config"])
        if saved.resolve(self.wid_model.teacher_dims) != self.wid_model.wid_config:
            raise ValueError(
                f"The checkpoint at {directory} was trained with a different WIDConfig ({saved}); resume with the "
                "same configuration, or start a new output_dir."
            )
        tensors = checkpoint.read_wid_tensors(directory, next(self.wid_model.parameters()).device)
        self.wid_model.load_wid_state_dict(tensors, source=os.path.join(directory, checkpoint.WEIGHTS_NAME))

    # ------------------------------------------------------------------ the student
    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if not resume_from_checkpoint:  # a resumed run reads its scores from the checkpoint
            self._initial_taylor_scores()
        output = super().train(resume_from_checkpoint, *args, **kwargs)
        if getattr(self.args, "save_student_to", None):
            self.save_student(self.args.save_student_to)
        return output

    def _initial_taylor_scores(self) -> None:
        """``WIDConfig.taylor_init_batches``: the Taylor scores start from the teacher's first-order scores on that
        many training batches (a seeded sample, the same on every rank; averaged over ranks under DDP). Skipped when
        the scores already hold something (a model trained before)."""
        wid = self.wid_model
        n = wid.wid_config.taylor_init_batches
        if not n or any(wid.masks.score(name).any() for name in wid.masks.group_names):
            return
        dataset = self.train_dataset
        if dataset is None:
            raise ValueError("taylor_init_batches needs a train_dataset to score the teacher on.")
        if isinstance(dataset, datasets.Dataset):  # as Trainer's own loader does
            dataset = self._remove_unused_columns(dataset, description="training")
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=self._train_batch_size, collate_fn=self.data_collator,
            shuffle=not isinstance(dataset, torch.utils.data.IterableDataset),
            generator=torch.Generator().manual_seed(self.args.seed))
        with torch.random.fork_rng(devices=[]):  # the collator's masks must not move the run's own RNG stream
            torch.manual_seed(self.args.seed)
            batches = [self._prepare_inputs(b) for b in itertools.islice(loader, n)]
        if any("labels" not in b for b in batches):
            raise ValueError("taylor_init_batches needs labelled batches (e.g. DataCollatorForLanguageModeling).")

        def loss_fn(model, batch):
            return masked_lm_loss(model, batch)[0] if self._is_mlm else model(**batch).loss

        initial_taylor_scores(wid, batches, loss_fn)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for name in wid.masks.group_names:
                score = wid.masks.score(name)
                torch.distributed.all_reduce(score)
                score.div_(torch.distributed.get_world_size())

    def save_student(self, path: str, **merge_kwargs):
        """Merge the compactors and save the student (plus the tokenizer, if the trainer has one) to `path`.
        Every rank merges (so every rank holds the same student); only the main process writes. Returns it."""
        student = self.wid_model.merge_and_unload(progressbar=self.is_world_process_zero(), **merge_kwargs)
        if self.args.should_save:
            student.save_pretrained(path)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(path)
        return student


def wid_metrics(model: WIDModel) -> dict[str, float]:
    """What `WIDTrainer` logs: kept widths per group kind, the fraction of the teacher's parameters pruned so
    far, the norm of the pruned compactor entries, and the student's parameter count with the current masks."""
    model = _unwrap_wid(model)
    kept = model.kept_sizes()
    metrics: dict[str, float] = {}
    for kind in GROUP_KINDS:
        sizes = [kept[name] for name, group in model.groups.items() if group.kind == kind]
        if sizes:
            metrics[f"wid/kept_{kind}"] = float(min(sizes))
    student = model.student_parameter_count()
    teacher = model.teacher_parameter_count()
    metrics["wid/student_params"] = float(student)
    metrics["wid/pruned_fraction"] = 1.0 - student / teacher
    metrics["wid/pruned_norm"] = float(sum(v**2 for v in model.pruned_norms().values()) ** 0.5)
    metrics["wid/hard_masks"] = float(model.hard_masks_active)
    skipped = skipped_score_steps(model)
    if skipped:  # steps whose Taylor scores were not finite, left out of the scores (pruner.accumulate_taylor)
        metrics["wid/skipped_score_steps"] = float(skipped)
    return metrics


def _unwrap_wid(model) -> WIDModel:
    model = unwrap_model(model)
    if not isinstance(model, WIDModel):
        raise TypeError(f"expected a WIDModel, got {type(model).__name__}")
    return model
