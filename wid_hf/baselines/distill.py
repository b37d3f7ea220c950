"""The knowledge-distillation objectives compared in "How to Distill your BERT" (Wang et al., ACL 2023), as a
Trainer: vanilla logit KD (temperature, mixed with the hard masked-LM loss), hidden-state MSE over mapped layers,
and attention transfer (MSE on pre-softmax scores, TinyBERT-style; or KL between attention distributions,
MiniLM-style). The teacher is frozen, in eval mode, on the student's device.

    >>> trainer = DistillationTrainer(model=student, teacher=teacher, objective="attention_kl", args=args,
    ...                               train_dataset=ds, data_collator=collator)               # doctest: +SKIP

The student may be a plain BERT or a `WIDModel` (WID combined with a KD objective).
"""

from __future__ import annotations

import logging
import os
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer, TrainerCallback

from ..mlm import masked_lm_loss, mlm_head, mlm_head_at, warn_if_cuda_graphs
from ..resume import ExactResumeMixin
from ..utils import unwrap_model
from .etd import uniform_layers

logger = logging.getLogger(__name__)

OBJECTIVES = ("mlm", "logit", "hidden", "attention_mse", "attention_kl")


def _wid_model(model: nn.Module):
    """The WIDModel inside `model` (through DDP / torch.compile wrappers), or None for a plain student."""
    from ..model import WIDModel

    model = unwrap_model(model)
    return model if isinstance(model, WIDModel) else None


def _bert(model: nn.Module) -> nn.Module:
    base = getattr(model, "base_model", model)
    base = getattr(base, "bert", base)
    return base


class _QKCapture:
    """Forward hooks that keep each layer's query and key projections (any attention implementation)."""

    def __init__(self, model: nn.Module):
        # a WID student on its student path projects to kept dims only: put them back at the teacher's width
        wid = _wid_model(model)
        self.expand = (lambda t, i: wid.expand_to_teacher(t, f"attention_{i}")) if wid is not None else None
        self.q: dict[int, torch.Tensor] = {}
        self.k: dict[int, torch.Tensor] = {}
        self.handles = []
        for i, layer in enumerate(_bert(model).encoder.layer):
            attn = layer.attention.self
            self.handles.append(attn.query.register_forward_hook(self._keep(self.q, i, self.expand)))
            self.handles.append(attn.key.register_forward_hook(self._keep(self.k, i, self.expand)))
        self.heads = _bert(model).config.num_attention_heads

    @staticmethod
    def _keep(store, i, expand=None):
        def hook(module, inputs, output):
            store[i] = expand(output, i) if expand is not None else output

        return hook

    def scores(self, i: int, attention_mask: Optional[torch.Tensor], head_size: Optional[int] = None) -> torch.Tensor:
        """Pre-softmax attention scores (batch, heads, seq, seq) of layer i, with the padding mask added."""
        q, k = self.q[i], self.k[i]
        b, s, width = q.shape
        h = width // self.heads
        q = q.view(b, s, self.heads, h).transpose(1, 2)
        k = k.view(b, s, self.heads, h).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / (head_size or h) ** 0.5
        if attention_mask is not None:
            scores = scores + (1.0 - attention_mask[:, None, None, :].to(scores.dtype)) * -1e4
        return scores

    def clear(self):
        """Drop the captured projections (and the autograd graph they hold) once the loss has used them."""
        self.q.clear()
        self.k.clear()

    def remove(self):
        for handle in self.handles:
            handle.remove()


PROJECTION_NAME = "kd_projection.safetensors"  # in a checkpoint of the hidden objective


class _ZeroGradAfterStep(TrainerCallback):
    """Zeroes a module's gradients after every optimizer step (one outside the model, which Trainer leaves alone)."""

    def __init__(self, module: nn.Module):
        self.module = module

    def on_step_end(self, args, state, control, **kwargs):
        self.module.zero_grad(set_to_none=True)


class DistillationTrainer(ExactResumeMixin, Trainer):
    """A Trainer whose loss is ``(1 - alpha) * MLM + alpha * KD`` for the chosen objective (``mlm``: no KD)."""

    def __init__(self, model=None, args=None, *pargs, teacher: nn.Module = None, objective: str = "logit",
                 temperature: float = 2.0, alpha: float = 0.5, layer_map: Optional[Sequence[int]] = None,
                 attention_layers: str = "last", **kwargs):
        """`objective`: one of OBJECTIVES; `temperature`: softmax temperature of logit KD; `alpha`: weight of the KD
        term (1 - alpha weighs the hard masked-LM loss); `layer_map`: teacher layer per student layer (default:
        uniform, last to last); `attention_layers`: attention transfer on the "last" or "all" mapped layers."""
        super().__init__(model, args, *pargs, **kwargs)
        warn_if_cuda_graphs(self)
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if objective != "mlm" and teacher is None:
            raise ValueError(f"objective {objective!r} needs a teacher model.")
        if attention_layers not in ("last", "all"):
            raise ValueError(f"attention_layers must be 'last' or 'all', got {attention_layers!r}")
        self.objective, self.temperature, self.alpha = objective, temperature, alpha
        self.attention_layers = attention_layers
        self.teacher = teacher
        self.projection = None
        if teacher is not None:
            device = next(self.model.parameters()).device
            self.teacher = teacher.to(device).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
            s_cfg, t_cfg = _bert(self.model).config, _bert(self.teacher).config
            self.layer_map = list(layer_map) if layer_map else uniform_layers(t_cfg.num_hidden_layers, s_cfg.num_hidden_layers)
            if self.objective.startswith("attention") and s_cfg.num_attention_heads != t_cfg.num_attention_heads:
                raise ValueError("Attention transfer compares heads one to one: the student needs the teacher's head "
                                 f"count ({t_cfg.num_attention_heads}), it has {s_cfg.num_attention_heads}. Use "
                                 "head_strategy='dim' or a logit/hidden objective.")
            if self.objective == "hidden" and s_cfg.hidden_size != t_cfg.hidden_size:
                # TinyBERT's learned projection from the student's width to the teacher's, trained with the student
                # (kept in the trainer, not the student, so the saved student stays a plain model)
                self.projection = nn.Linear(s_cfg.hidden_size, t_cfg.hidden_size, bias=False).to(device)
                # Trainer zeroes the model's gradients after each optimizer step, not the projection's
                self.add_callback(_ZeroGradAfterStep(self.projection))
            if self.objective.startswith("attention"):
                self._student_qk, self._teacher_qk = _QKCapture(self.model), _QKCapture(self.teacher)
                self._teacher_head = t_cfg.hidden_size // t_cfg.num_attention_heads
        # the loss below is a per-micro-batch mean: Trainer must divide it by the accumulation steps
        self.model_accepts_loss_kwargs = False

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        # the hidden objective's projection trains with the student but lives in the trainer: without it in the
        # checkpoint a resumed run would start it again from a fresh initialisation
        super()._save_optimizer_and_scheduler(output_dir)
        if self.projection is not None and self.args.should_save:
            from safetensors.torch import save_file

            save_file({k: v.detach().cpu().contiguous() for k, v in self.projection.state_dict().items()},
                      os.path.join(output_dir, PROJECTION_NAME))

    def _load_optimizer_and_scheduler(self, checkpoint) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if self.projection is not None and checkpoint is not None:
            from safetensors.torch import load_file

            path = os.path.join(checkpoint, PROJECTION_NAME)
            if os.path.isfile(path):
                self.projection.load_state_dict(load_file(path, device=str(self.projection.weight.device)))
            else:  # a checkpoint of an earlier wid_hf: resumable, not exactly
                logger.warning("%s has no %s: the hidden objective's projection starts again from its "
                               "initialisation, so this resume is not exact.", checkpoint, PROJECTION_NAME)

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if self.projection is not None and not any(
            p is self.projection.weight for group in optimizer.param_groups for p in group["params"]
        ):
            optimizer.add_param_group({"params": list(self.projection.parameters()), "weight_decay": 0.0})
        return optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None, **kwargs):
        need_hidden = self.objective == "hidden"
        labels = inputs.get("labels")
        # training: the MLM head at the masked positions only (wid_hf.mlm; the same loss, a fraction of the cost)
        masked_only = labels is not None and not return_outputs and mlm_head(model) is not None
        if masked_only:
            hard, outputs = masked_lm_loss(model, inputs, output_hidden_states=need_hidden)
        else:
            outputs = model(**inputs, output_hidden_states=need_hidden)
            hard = outputs.loss
        if self.objective == "mlm":
            return (hard, outputs) if return_outputs else hard
        teacher_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        with torch.no_grad():
            if masked_only and self.objective == "logit":
                with mlm_head_at(self.teacher, labels != -100):
                    teacher_out = self.teacher(**teacher_inputs)
            else:
                teacher_out = self.teacher(**teacher_inputs, output_hidden_states=need_hidden)
        if self.objective == "logit":
            student_logits, teacher_logits = outputs.logits, teacher_out.logits
            if not masked_only:
                picked = labels != -100 if labels is not None else torch.ones(
                    student_logits.shape[:-1], dtype=torch.bool, device=student_logits.device)
                student_logits, teacher_logits = student_logits[picked], teacher_logits[picked]
            t = self.temperature
            kd = F.kl_div(F.log_softmax(student_logits / t, -1), F.softmax(teacher_logits / t, -1),
                          reduction="batchmean") * t * t
        elif self.objective == "hidden":
            student_states = [self._full_width(s) for s in outputs.hidden_states[1:]]
            teacher_states = teacher_out.hidden_states[1:]
            kd = sum(F.mse_loss(self._project(s), teacher_states[j]) for s, j in zip(student_states, self.layer_map))
            kd = kd / len(self.layer_map)
        else:
            mask = inputs.get("attention_mask")
            pairs = list(enumerate(self.layer_map))
            if self.attention_layers == "last":
                pairs = pairs[-1:]
            kd = 0.0
            for i, j in pairs:
                # the student's heads are scored at the teacher's scale (WID trains with 1/sqrt(h_teacher))
                s_scores = self._student_qk.scores(i, mask, head_size=self._teacher_head)
                t_scores = self._teacher_qk.scores(j, mask)
                if self.objective == "attention_mse":
                    valid = mask[:, None, :, None].bool() & mask[:, None, None, :].bool() if mask is not None else None
                    diff = (s_scores - t_scores).square()
                    kd = kd + (diff[valid.expand_as(diff)].mean() if valid is not None else diff.mean())
                else:
                    kd = kd + F.kl_div(F.log_softmax(s_scores, -1), F.softmax(t_scores, -1), reduction="none").sum(-1).mean()
            kd = kd / len(pairs)
            self._student_qk.clear()  # else the last step's graph stays alive until the next forward
            self._teacher_qk.clear()
        loss = (1 - self.alpha) * hard + self.alpha * kd
        return (loss, outputs) if return_outputs else loss

    def _project(self, state: torch.Tensor) -> torch.Tensor:
        return self.projection(state) if self.projection is not None else state

    def _full_width(self, state: torch.Tensor, group: str = "hidden") -> torch.Tensor:
        """A WID student on its student path (hard masks) emits kept dims only; compare at the teacher's width,
        zeros in pruned dims, exactly as the full path does."""
        wid = _wid_model(self.model)
        return wid.expand_to_teacher(state, group) if wid is not None else state


def _wid_distillation_trainer():
    from ..trainer import WIDTrainer

    class WIDDistillationTrainer(DistillationTrainer, WIDTrainer):
        """WID combined with a KD objective: WIDTrainer's optimizer groups, schedule and checkpoints, with the
        loss of `DistillationTrainer` (e.g. ``objective="attention_kl"`` for WID + attention transfer)."""

    return WIDDistillationTrainer


WIDDistillationTrainer = _wid_distillation_trainer()
