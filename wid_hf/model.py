"""`get_wid_model` and `WIDModel`: inject compactors into a BERT model, schedule masks, merge to a student.

Example:
    >>> from transformers import BertConfig, BertForMaskedLM
    >>> from wid_hf import WIDConfig, get_wid_model
    >>> teacher = BertForMaskedLM(BertConfig(hidden_size=48, num_attention_heads=4, intermediate_size=96,
    ...                                      num_hidden_layers=2, vocab_size=100))
    >>> model = get_wid_model(teacher, WIDConfig(target_ratio=0.5, mask_interval=2, pruning_intervals=2))
    >>> model.finalize_masks()
    >>> student = model.merge_and_unload(progressbar=False)
    >>> student.config.hidden_size, student.config.intermediate_size
    (24, 48)
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from contextlib import contextmanager
from typing import Any, Optional

import torch
from torch import nn

from . import checkpoint, pruner
from .config import TeacherDims, WIDConfig
from .layer import EmbeddingCompactor, FoldReuse, MaskedLayerNorm, StudentHeadSize, WIDLinear, WIDMasks
from .mask_groups import MaskGroup
from .merge import EMBEDDING_TABLES, build_student
from .schedule import pruning_end_step
from .utils import set_dropout

logger = logging.getLogger(__name__)

# Model classes wid_hf knows how to wrap, and the group their task head reads: "hidden" (token outputs),
# "pooler" (the pooled [CLS] output) or None (no task head besides the MLM head, or none at all).
SUPPORTED_MODELS = {
    "BertForMaskedLM": None,
    "BertModel": None,
    "BertForSequenceClassification": ("classifier", "pooler"),
    "BertForMultipleChoice": ("classifier", "pooler"),
    "BertForTokenClassification": ("classifier", "hidden"),
    "BertForQuestionAnswering": ("qa_outputs", "hidden"),
}

# The injection table (docs/method.md, "Compactors"): module path below the encoder -> (wrapper, input group, output group).
# "{i}" is the layer index. Compactors on the vocabulary or label side are never created.
_ENCODER_RULES = [
    (r"embeddings\.LayerNorm", "embedding", None, "hidden"),
    (r"encoder\.layer\.(?P<i>\d+)\.attention\.self\.(query|key|value)", "linear", "hidden", "attention_{i}"),
    (r"encoder\.layer\.(?P<i>\d+)\.attention\.output\.dense", "linear", "attention_{i}", "hidden"),
    (r"encoder\.layer\.(?P<i>\d+)\.attention\.output\.LayerNorm", "norm", None, "hidden"),
    (r"encoder\.layer\.(?P<i>\d+)\.intermediate\.dense", "linear", "hidden", "ffn_{i}"),
    (r"encoder\.layer\.(?P<i>\d+)\.output\.dense", "linear", "ffn_{i}", "hidden"),
    (r"encoder\.layer\.(?P<i>\d+)\.output\.LayerNorm", "norm", None, "hidden"),
    (r"pooler\.dense", "linear", "hidden", "pooler"),
]
_MLM_RULES = [
    (r"cls\.predictions\.transform\.dense", "linear", "hidden", "head"),
    (r"cls\.predictions\.transform\.LayerNorm", "norm", None, "head"),
    (r"cls\.predictions\.decoder", "linear", "head", None),
]


def _check_supported(model: nn.Module) -> str:
    if isinstance(model, WIDModel) or any(isinstance(m, (WIDLinear, MaskedLayerNorm)) for m in model.modules()):
        raise ValueError(
            "This model already has WID compactors. Use the WIDModel you have, or call merge_and_unload() first "
            "and inject into the merged student."
        )
    name = type(model).__name__
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type != "bert" or name not in SUPPORTED_MODELS:
        raise TypeError(
            f"wid_hf compresses BERT models; got {name} (model_type={model_type!r}). Supported classes: "
            f"{', '.join(SUPPORTED_MODELS)}. Load your checkpoint with one of them, e.g. "
            "BertForMaskedLM.from_pretrained(...)."
        )
    if getattr(config, "add_cross_attention", False) or getattr(config, "is_decoder", False):
        raise ValueError("wid_hf supports encoder BERT only (config.is_decoder and add_cross_attention must be False).")
    return name


class WIDModel(nn.Module):
    """A BERT model with WID compactors injected, PEFT-style. Call it like the teacher.

    Attributes not found here are looked up on the wrapped model (``config``, ``device``, ...), as PeftModel does.
    Use `get_wid_model` to build one.
    """

    #: Once masks are hard (on the student path, outside multi-process runs), keep only the kept slices of every
    #: compactor: the pruned rows/columns are exactly zero and never read again, so dropping them (with their
    #: gradients and optimizer state) changes no result and frees their memory and optimizer work. See
    #: `compact_compactors`. Set False to keep whole compactors.
    compact_at_hard_masks: bool = True

    def __init__(self, model: nn.Module, config: WIDConfig):
        super().__init__()
        class_name = _check_supported(model)
        self.teacher_dims = TeacherDims.from_model_config(model.config)
        self.wid_config = config.resolve(self.teacher_dims)
        self.base_model = model
        self.groups: dict[str, MaskGroup] = {}
        self._inject(class_name)
        if self.wid_config.train_dropout is not None:
            set_dropout(model, self.wid_config.train_dropout)  # config untouched: the merged student keeps it

    # ------------------------------------------------------------------ injection
    def _inject(self, class_name: str) -> None:
        model, dims = self.base_model, self.teacher_dims
        prefix = "" if class_name == "BertModel" else "bert."
        rules = [(prefix + pattern, *rest) for pattern, *rest in _ENCODER_RULES]
        if class_name == "BertForMaskedLM":
            rules += _MLM_RULES
        task_head = SUPPORTED_MODELS[class_name]
        if task_head is not None:
            rules.append((re.escape(task_head[0]), "linear", task_head[1], None))

        groups = [("hidden", "hidden", dims.hidden_size)]  # (name, kind, size)
        for i in range(model.config.num_hidden_layers):
            groups += [(f"attention_{i}", "attention", dims.hidden_size), (f"ffn_{i}", "ffn", dims.intermediate_size)]
        if class_name == "BertForMaskedLM":
            groups.append(("head", "head", dims.hidden_size))
        if getattr(model.get_submodule(prefix.rstrip(".")) if prefix else model, "pooler", None) is not None:
            groups.append(("pooler", "pooler", dims.hidden_size))
        sizes = {name: size for name, _, size in groups}
        self.masks = WIDMasks(sizes, device=next(model.parameters()).device,
                              scores=self.wid_config.mask_scoring == "taylor")
        for name, kind, size in groups:
            block = dims.head_size if kind in ("hidden", "attention") else None
            self.groups[name] = MaskGroup(name=name, kind=kind, size=size, block_size=block)

        compiled = [(re.compile(p), *rest) for p, *rest in rules]
        matched = {p.pattern: 0 for p, *_ in compiled}
        for name, module in list(model.named_modules()):
            for pattern, wrapper, in_t, out_t in compiled:
                found = pattern.fullmatch(name)
                if not found:
                    continue
                layer = found.groupdict().get("i")
                in_g = in_t.format(i=layer) if in_t else None
                out_g = out_t.format(i=layer) if out_t else None
                if (in_g and in_g not in sizes) or (out_g and out_g not in sizes):
                    continue  # e.g. a classifier reading a pooler this model does not have
                self._replace(name, module, wrapper, in_g, out_g)
                matched[pattern.pattern] += 1
        missing = [p for p, n in matched.items() if n == 0 and "pooler" not in p and "classifier" not in p]
        if missing:
            raise ValueError(
                f"Could not find the modules {missing} in {type(model).__name__}; wid_hf expects the module layout "
                "of transformers' modeling_bert.py."
            )
        self._set_score_sources(model, prefix)
        self._embeddings_path = prefix + "embeddings"
        if self.wid_config.head_strategy == "dim":
            student_head = self.wid_config.target_hidden_size // dims.num_attention_heads
            hook = StudentHeadSize(self.masks, dims.head_size, student_head)
            for layer in model.get_submodule(prefix + "encoder.layer"):
                layer.attention.self.register_forward_pre_hook(hook)

    def _replace(self, name: str, module: nn.Module, wrapper: str, in_g, out_g) -> None:
        parent_name, _, child = name.rpartition(".")
        parent = self.base_model.get_submodule(parent_name) if parent_name else self.base_model
        if wrapper == "linear":
            if not isinstance(module, nn.Linear):
                raise TypeError(f"{name} is a {type(module).__name__}, expected nn.Linear")
            for group, features in ((in_g, module.in_features), (out_g, module.out_features)):
                if group is not None and self.groups[group].size != features:
                    raise ValueError(
                        f"{name} has {features} features where group {group!r} has {self.groups[group].size}; "
                        "was this model pruned or resized? WID needs the standard BERT shapes."
                    )
            new = WIDLinear(module, self.masks, in_g, out_g)
            if in_g:
                self.groups[in_g].add(new, "readers")
            if out_g:
                self.groups[out_g].add(new, "writers")
        elif wrapper == "norm":
            new = MaskedLayerNorm(module, self.masks, out_g)
            self.groups[out_g].add(new, "norms")
        else:
            new = EmbeddingCompactor(module, self.masks, out_g)
            self.groups[out_g].add(new, "embeddings")
            self.groups[out_g].add(new.norm, "norms")
        setattr(parent, child, new)

    def _set_score_sources(self, model: nn.Module, prefix: str) -> None:
        """The reference scoring sources (docs/method.md, "Mask groups")."""
        layers = model.get_submodule(prefix + "encoder.layer")
        self.groups["hidden"].score_source = (layers[0].attention.self.value, "in")
        for i, layer in enumerate(layers):
            self.groups[f"attention_{i}"].score_source = (layer.attention.output.dense, "in")
            self.groups[f"ffn_{i}"].score_source = (layer.output.dense, "in")
        if "head" in self.groups:
            self.groups["head"].score_source = (model.cls.predictions.decoder, "in")
        if "pooler" in self.groups:
            pooler = model.get_submodule(prefix + "pooler")
            self.groups["pooler"].score_source = (pooler.dense, "out")

    # ------------------------------------------------------------------ plumbing
    def forward(self, *args, **kwargs):
        return self.base_model(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    def get_base_model(self) -> nn.Module:
        return self.base_model

    def compactor_parameters(self):
        """The compactors (trained at the compactor learning rate)."""
        return [p for n, p in self.named_parameters() if ".compactor" in n]

    def inherited_parameters(self):
        """The teacher's own weights, biases and LayerNorms (trained at the inherited-weights learning rate)."""
        return [p for n, p in self.named_parameters() if ".compactor" not in n]

    # ------------------------------------------------------------------ schedule
    @property
    def pruning_end_step(self) -> int:
        """First optimizer step at which every group has reached its target."""
        kinds = {g.kind for g in self.groups.values()}
        return pruning_end_step(self.wid_config, self.teacher_dims, kinds)

    @property
    def hard_mask_step(self) -> Optional[int]:
        """Optimizer step at which `wid_step` switches to hard masks: one interval after the last increment, so
        the entries pruned last have decayed under the penalty before they are zeroed. None if hard masks are off."""
        return self.pruning_end_step + self.wid_config.mask_interval if self.wid_config.hard_masks else None

    @property
    def hard_masks_active(self) -> bool:
        return self.masks.is_hard

    @property
    def student_path(self) -> bool:
        """Whether, once masks are hard, the model runs at the student's widths (default True): every layer reads
        and writes only kept dims, so a training step costs about what the student's does, with the same outputs
        and gradients as the full path (teacher-size products with masks multiplied in; set False to use it).
        On the student path hidden states and attention projections come out at the kept widths
        (`expand_to_teacher` puts them back at the teacher's, with zeros in pruned dims)."""
        return self.masks.student_path

    @student_path.setter
    def student_path(self, value: bool) -> None:
        if not value and self.masks.compact:
            self.expand_compactors()  # the full path reads whole compactors
        self.masks.student_path = bool(value)

    # ------------------------------------------------------------------ compact compactors (hard masks)
    def compactor_slots(self):
        """``(parameter name, module, attribute, group, dim)`` of every compactor; `dim` is the axis its group's
        mask lies over (columns of input compactors, rows of output and embedding compactors)."""
        for name, module in self.named_modules():
            if isinstance(module, WIDLinear):
                if module.compactor_in is not None:
                    yield f"{name}.compactor_in", module, "compactor_in", module.in_group, 1
                if module.compactor_out is not None:
                    yield f"{name}.compactor_out", module, "compactor_out", module.out_group, 0
            elif isinstance(module, EmbeddingCompactor):
                yield f"{name}.compactor", module, "compactor", module.group, 0

    @property
    def compactors_compacted(self) -> bool:
        """True while the compactors hold only their kept slices (see `compact_compactors`)."""
        return self.masks.compact

    @torch.no_grad()
    def compact_compactors(self, optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        """Under hard masks, replace every compactor by its kept slice (the kept rows of output compactors, the kept
        columns of input ones), in place: the same `nn.Parameter` objects, so an optimizer keeps working with them.
        Pass the optimizer to slice its state (Adam's moments) alike. The pruned entries are exactly zero and
        never read on the student path, so training continues with identical values for every kept entry, at a
        fraction of the compactors' memory and optimizer work (half for half widths, a quarter at a quarter).

        Done automatically when masks turn hard (`compact_at_hard_masks`), except in multi-process runs: DDP's
        gradient buckets are laid out for the parameters' shapes at wrapping time. Checkpoints always hold whole
        compactors (`wid_state_dict` expands them), so they load with or without compaction. Code that keeps an
        autograd graph alive from one step into the next (tensors captured in a forward and kept) must drop it
        before this runs: autograd checks a gradient's shape against the parameter's shape when the graph was built."""
        if self.masks.compact:
            return
        if not self.masks.is_hard:
            raise RuntimeError("compact_compactors() needs hard masks (finalize_masks() first): before them pruned "
                               "entries are not zero and masks may still change.")
        odd = self._unsliceable_state(optimizer)
        if odd:
            raise ValueError(f"The optimizer keeps state of another shape than its parameter ({odd}: e.g. factored or "
                             "quantized moments), which cannot be sliced with the compactors. Use AdamW, or keep whole "
                             "compactors (WIDModel.compact_at_hard_masks = False).")
        self._resize_compactors(optimizer, compact=True)
        self.masks.compact = True

    def _unsliceable_state(self, optimizer) -> Optional[str]:
        """The name of a compactor whose optimizer state holds a non-scalar tensor not shaped like it, if any."""
        state = getattr(optimizer, "state", {}) if optimizer is not None else {}
        for name, module, attr, _, _ in self.compactor_slots():
            param = getattr(module, attr)
            for value in state.get(param, {}).values():
                if torch.is_tensor(value) and value.dim() > 0 and value.shape != param.shape:
                    return name
        return None

    @torch.no_grad()
    def expand_compactors(self, optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        """Undo `compact_compactors`: whole compactors again, with zeros in the pruned rows/columns (and in the
        optimizer state given)."""
        if not self.masks.compact:
            return
        self._resize_compactors(optimizer, compact=False)
        self.masks.compact = False

    def _resize_compactors(self, optimizer, compact: bool) -> None:
        state = getattr(optimizer, "state", {}) if optimizer is not None else {}
        for _, module, attr, group, dim in self.compactor_slots():
            param = getattr(module, attr)
            resize = self._compactor_resizer(group, dim, compact)
            old_shape = param.shape
            param.data = resize(param.data)
            if param.grad is not None:
                param.grad = resize(param.grad)
            for key, value in state.get(param, {}).items():
                if torch.is_tensor(value) and value.shape == old_shape:
                    state[param][key] = resize(value)

    def _compactor_resizer(self, group: str, dim: int, compact: bool):
        index, size = self.masks.kept_index(group), self.groups[group].size
        if compact:
            return lambda t: t.index_select(dim, index.to(t.device))

        def expand(t: torch.Tensor) -> torch.Tensor:
            shape = list(t.shape)
            shape[dim] = size
            return t.new_zeros(shape).index_copy_(dim, index.to(t.device), t)

        return expand

    def whole_compactors(self) -> dict[str, torch.Tensor]:
        """Every compacted compactor at its whole shape (zeros in the pruned rows/columns), by parameter name; empty
        when the compactors are whole already."""
        if not self.masks.compact:
            return {}
        return {name: self._compactor_resizer(group, dim, compact=False)(getattr(module, attr))
                for name, module, attr, group, dim in self.compactor_slots()}

    def fit_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring the optimizer's state for every compactor to the compactor's current shape (kept slice or whole),
        e.g. after loading the state of a run that was (or was not) compacted."""
        state = getattr(optimizer, "state", {})
        for _, module, attr, group, dim in self.compactor_slots():
            param = getattr(module, attr)
            for key, value in state.get(param, {}).items():
                if torch.is_tensor(value) and value.dim() == 2 and value.shape != param.shape:
                    state[param][key] = self._compactor_resizer(group, dim, compact=self.masks.compact)(value)

    def _compact_if_enabled(self, optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        """Compact (see `compact_at_hard_masks`) when masks are hard, on the student path, in a single process."""
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1
        if not (self.compact_at_hard_masks and self.masks.is_hard and self.masks.student_path) or distributed:
            return
        odd = self._unsliceable_state(optimizer)
        if odd:
            logger.warning("Keeping whole compactors: the optimizer's state for %s is not shaped like the parameter "
                           "(factored or quantized moments), so it cannot be sliced with them.", odd)
            return
        self.compact_compactors(optimizer)

    def expand_to_teacher(self, tensor: torch.Tensor, group: str = "hidden") -> torch.Tensor:
        """A tensor whose last dim holds `group`'s kept dims (student path) at the group's full width, zeros in the
        pruned dims: what the full path computes. Returned unchanged when it already has the full width."""
        size = self.groups[group].size
        if tensor.shape[-1] == size:
            return tensor
        full = tensor.new_zeros(*tensor.shape[:-1], size)
        return full.index_copy(-1, self.masks.kept_index(group), tensor)

    def wid_step(self, step: int, optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        """Everything WID does before optimizer step `step` (1-based: ``trainer.state.global_step + 1``), once the
        step's gradients are complete and clipped: recompute the masks at every interval, switch to hard masks at
        `hard_mask_step`, and apply the penalty. `WIDTrainer` calls this; call it yourself in a custom loop."""
        pruner.wid_step(self, step, optimizer)

    @contextmanager
    def accumulating(self, last: bool, micro_batches: int = 1):
        """Run one micro-batch's forward and backward of a gradient-accumulation step inside this context, with
        ``last=True`` for the step's last micro-batch: each layer's effective weight is then formed once per
        optimizer step instead of once per micro-batch (`wid_hf.layer.FoldReuse`; same gradients up to rounding).
        ``micro_batches`` (the accumulation steps) lets each layer's product order count the fold once per step.
        Every micro-batch of the step must use it, and the parameters must not change until the last one's
        backward is done (as in any accumulation loop). WIDTrainer does this for you::

            for i, micro_batch in enumerate(micro_batches):
                with wid_model.accumulating(last=i == len(micro_batches) - 1, micro_batches=len(micro_batches)):
                    loss_fn(wid_model, micro_batch).backward()
        """
        reuse = self.__dict__.get("_fold_reuse")
        if reuse is None:
            reuse = self.__dict__["_fold_reuse"] = FoldReuse(micro_batches)
        reuse.last = bool(last)
        self.masks.fold_reuse = reuse
        done = bool(last)
        try:
            yield reuse
        except BaseException:
            done = True  # a failed micro-batch leaves no folds behind for the next step
            raise
        finally:
            self.masks.fold_reuse = None
            if done:
                self.__dict__.pop("_fold_reuse", None)

    def student_parameter_count(self) -> int:
        """Parameters the merged student would have with the current masks (decoder untied, as after a merge)."""
        return self._parameter_count(self.masks.kept_count)

    def teacher_parameter_count(self) -> int:
        """The same count with nothing pruned: the teacher's size with an untied decoder, for ratios."""
        return self._parameter_count(lambda group: self.groups[group].size)

    def _parameter_count(self, kept) -> int:
        count = 0
        for module in self.base_model.modules():
            if isinstance(module, WIDLinear):
                rows = kept(module.out_group) if module.out_group else module.out_features
                cols = kept(module.in_group) if module.in_group else module.in_features
                count += rows * cols + (rows if module.base_layer.bias is not None else 0)
            elif isinstance(module, EmbeddingCompactor):
                embeddings = self.base_model.get_submodule(self._embeddings_path)
                count += sum(getattr(embeddings, t).num_embeddings for t in EMBEDDING_TABLES) * kept(module.group)
            elif isinstance(module, MaskedLayerNorm):
                count += 2 * kept(module.group)
        predictions = getattr(getattr(self.base_model, "cls", None), "predictions", None)
        if predictions is not None:
            count += predictions.bias.numel()  # separate from decoder.bias once untied
        return count

    def kept_sizes(self) -> dict[str, int]:
        """Kept width of every group, e.g. ``{"hidden": 516, "attention_0": 516, "ffn_0": 2064, ...}``."""
        return {name: self.masks.kept_count(name) for name in self.groups}

    def update_masks(self, step: int) -> dict[str, int]:
        """Recompute every mask group from scratch for optimizer step `step` (1-based; docs/method.md, "The
        schedule"): prune the scheduled number of lowest-importance indices. A no-op once hard masks are on."""
        pruner.update_masks(self, step)
        return self.kept_sizes()

    def finalize_masks(self, optimizer: Optional[torch.optim.Optimizer] = None) -> dict[str, int]:
        """Prune every group to its target now, switch to hard masks and zero pruned entries exactly.

        Groups already at their target keep their masks (recomputing them from decayed weights would only
        re-select the same indices); others are completed from the current importances. If an optimizer is given,
        its state for pruned entries is zeroed too, so Adam's momentum cannot move them off zero. Then the
        compactors keep only their kept slices (`compact_compactors`; `compact_at_hard_masks`): pass the optimizer
        you train with, so its state is sliced alike.
        """
        pruner.finalize_masks(self, optimizer)
        return self.kept_sizes()

    def zero_pruned_(self, optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        """Set every pruned entry, its pending gradient and (given an optimizer) its state to exactly zero."""
        pruner.zero_pruned(self, optimizer)

    def apply_penalty(self, step: int, optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        """Apply WID's sparsity penalty to the gradients of optimizer step `step` (see `wid_hf.pruner.apply_penalty`).
        Call it after gradients are complete (accumulated, unscaled and clipped) and before ``optimizer.step()``."""
        pruner.apply_penalty(self, step, optimizer)

    def pruned_norms(self) -> dict[str, float]:
        """L2 norm of the pruned compactor entries of every group (goes to zero as the penalty works)."""
        return pruner.pruned_norms(self)

    # ------------------------------------------------------------------ merge
    def merge_and_unload(
        self,
        progressbar: bool = True,
        probe_inputs: Optional[dict[str, torch.Tensor]] = None,
        atol: Optional[float] = None,
    ) -> nn.Module:
        """Fold every compactor into its weight and return a standard, narrower transformers model of the
        teacher's class (`BertForMaskedLM` for an MLM teacher) with ``tie_word_embeddings=False``.

        The WIDModel itself is left untouched. With `probe_inputs` (a batch for the model) the merge is verified:
        the max abs deviation of the student's outputs from this model's is logged and kept in
        ``self.last_merge_deviation``; with `atol` a larger deviation raises. Merging before hard masks are on is
        allowed but inexact, and always reported with the measured deviation (a random probe is used if none is
        given); groups that have not reached their targets yet are pruned to them from the current importances
        for the student (this model's masks are left as they are).
        """
        exact = self.masks.is_hard
        current = {name: self.masks.get(name).clone() for name in self.groups}
        if not exact:
            # A standard BERT needs every group at its final width (one hidden size, one FFN size): groups still
            # on their way are pruned to their targets from the current importances for the student only.
            pruner.prune_to_targets(self)
        try:
            student = build_student(self, progressbar=progressbar)
        finally:
            for name, kept in current.items():
                self.masks.set(name, kept)
        self.last_merge_deviation = None
        if probe_inputs is not None or not exact:
            probe = probe_inputs if probe_inputs is not None else self._random_probe()
            deviation = self.merge_deviation(student, probe)
            self.last_merge_deviation = deviation
            if not exact:
                warnings.warn(
                    f"merge_and_unload() before the masks are final (hard masks off, pruning ends at step "
                    f"{self.pruning_end_step}): pruned entries are not yet zero, so the student differs from the "
                    f"compactor model by up to {deviation:.3g} (max abs logit difference on a probe batch). Call "
                    "finalize_masks() first for an exact merge.",
                    stacklevel=2,
                )
            else:
                logger.info("merge verified: max abs deviation %.3g on the probe batch", deviation)
            if atol is not None and deviation > atol:
                raise RuntimeError(f"merged student deviates by {deviation:.3g} > atol={atol}")
        return student

    @torch.no_grad()
    def merge_deviation(self, student: nn.Module, inputs: dict[str, torch.Tensor]) -> float:
        """Max abs difference between this model's and `student`'s first output (logits) on `inputs`, eval mode."""
        inputs = {k: v for k, v in inputs.items() if k != "labels"}
        was_training, student_training = self.training, student.training
        self.eval()
        student.eval()
        try:
            ours = _first_output(self(**inputs))
            theirs = _first_output(student(**inputs))
        finally:
            self.train(was_training)
            student.train(student_training)
        if ours.shape != theirs.shape:  # a bare encoder: compare the kept hidden dims (the others are zero)
            ours = ours.index_select(-1, self.masks.kept_index("hidden"))
        return float((ours.float() - theirs.float()).abs().max())

    def _random_probe(self) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(0)
        vocab = self.base_model.config.vocab_size
        ids = torch.randint(0, vocab, (2, 16), generator=generator).to(self.masks.hard.device)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    # ------------------------------------------------------------------ save / load (wid_hf.checkpoint)
    def wid_state_dict(self, include_inherited: bool = True) -> dict[str, torch.Tensor]:
        """Compactors, masks and (by default) the inherited weights, each tensor once (tied ones deduplicated)."""
        return checkpoint.wid_state_dict(self, include_inherited)

    def save_pretrained(self, save_directory: str | os.PathLike, include_inherited: bool = True, **kwargs) -> None:
        """Write ``wid_config.json`` and ``wid_model.safetensors`` (compactors, masks and, by default, the
        inherited weights, which WID also trains). Load with ``WIDModel.from_pretrained(teacher, save_directory)``."""
        checkpoint.save_wid_state(self, save_directory, include_inherited)

    def push_to_hub(self, repo_id: str, **kwargs):
        """Push the WID state (see `save_pretrained`) to a Hub repo, PEFT-style; `kwargs` go to
        `wid_hf.hub.push_wid_state` (private, revision, create_pr, token, local_dir)."""
        from .hub import push_wid_state

        return push_wid_state(self, repo_id, **kwargs)

    @classmethod
    def from_pretrained(cls, model: nn.Module, path: str | os.PathLike, **kwargs: Any) -> "WIDModel":
        """Inject compactors into `model` (the same teacher) and load a state written by `save_pretrained`.

        `path` is a local directory or a Hub repo id (downloaded with huggingface_hub; `kwargs` such as
        ``revision`` or ``token`` are passed to it)."""
        directory = checkpoint.resolve_directory(path, **kwargs)
        meta = checkpoint.read_wid_config(directory)
        checkpoint.check_teacher(meta, model.config, str(path))
        wid = cls(model, WIDConfig.from_dict(meta["wid_config"]))
        wid.load_wid_state_dict(checkpoint.read_wid_tensors(directory, next(model.parameters()).device),
                                source=os.path.join(directory, checkpoint.WEIGHTS_NAME))
        return wid

    def load_wid_state_dict(self, tensors: dict[str, torch.Tensor], source: str = "the checkpoint") -> None:
        """Load tensors of `wid_state_dict` (shapes and names must match this model)."""
        checkpoint.load_wid_state_dict(self, tensors, source)


def get_wid_model(model: nn.Module, config: WIDConfig) -> WIDModel:
    """Inject identity-initialised compactors around every weight matrix of a BERT model, in place.

    Only compactors are created: the teacher's tensors are reused, not copied. The returned `WIDModel` computes
    exactly what the teacher computes until training moves the compactors.

    Example:
        >>> from wid_hf import WIDConfig, get_wid_model
        >>> model = get_wid_model(teacher, WIDConfig.from_preset("wid55"))   # doctest: +SKIP
    """
    if not isinstance(config, WIDConfig):
        raise TypeError(f"config must be a WIDConfig, got {type(config).__name__}")
    return WIDModel(model, config)


def _first_output(output) -> torch.Tensor:
    if torch.is_tensor(output):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if hasattr(output, "start_logits"):
        return torch.cat([output.start_logits, output.end_logits], dim=-1)
    return output[0]
