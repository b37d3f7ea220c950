"""`WIDConfig`: what to compress a BERT teacher to, and how fast.

The config is a plain dataclass in the PEFT manner: it saves to a small JSON file next to the WID weights
(`wid_config.json`), loads back ignoring keys written by newer versions, and validates itself on construction.
Rules that depend on the teacher (divisibility by the head count, targets no larger than the teacher) are
checked by `WIDConfig.resolve` when the config meets a model, and every error names the nearest valid sizes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Literal, Optional

from .checkpoint import CONFIG_NAME, read_wid_config, write_wid_config

logger = logging.getLogger(__name__)

__all__ = ["WIDConfig", "TeacherDims", "PRESETS", "CONFIG_NAME"]
HEAD_STRATEGIES = ("dim", "head")
MASK_SCORINGS = ("reference", "aggregate", "taylor")
DECAYS = ("reference", "linear")
# Budget mode: masks become hard at this fraction of the run (WIDConfig.for_budget; docs/method.md, "Budget mode"),
BUDGET_HARD_MASK_AT = 0.55
# ... and from BUDGET_LONG_RUN_STEPS steps (where budget mode's learning rates halve at 15% masking, wid_hf.pipeline)
# at this earlier one: an interval is long there (66 steps at 1,500), and 40% measured as accurate as 55% at 1,500
# steps on three seeds, in about a fifth less time on the two measured on one machine; at 600 steps it was mixed (a
# little lower on validation over three seeds) and at 120 earlier hard masks (28%, 32.5%) were worse
# (benchmarks/results/dropout/0/seeds-600.md, seeds-1500.md; docs/method.md, "Hard masks earlier or later")
BUDGET_LONG_RUN_HARD_MASK_AT = 0.4
BUDGET_LONG_RUN_STEPS = 1000
# ... and the Taylor scores start from the teacher's on this many training batches (ETD-Impt scores on as many)
BUDGET_TAYLOR_INIT_BATCHES = 16
# ... and the model trains without dropout (WIDConfig.train_dropout)
BUDGET_TRAIN_DROPOUT = 0.0
# The Taylor scores' moving average spans this many optimizer steps by default (WIDConfig.taylor_window)
TAYLOR_WINDOW = 10


def budget_hard_mask_at(max_steps: int) -> float:
    """The fraction of a budget-mode run of `max_steps` optimizer steps at which masks become hard by default.

        >>> budget_hard_mask_at(300), budget_hard_mask_at(1500)
        (0.55, 0.4)
    """
    return BUDGET_LONG_RUN_HARD_MASK_AT if max_steps >= BUDGET_LONG_RUN_STEPS else BUDGET_HARD_MASK_AT


@dataclass(frozen=True)
class TeacherDims:
    """The widths of a BERT teacher that WID shrinks (depth is never changed)."""

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_model_config(cls, model_config) -> "TeacherDims":
        return cls(
            hidden_size=int(model_config.hidden_size),
            intermediate_size=int(model_config.intermediate_size),
            num_attention_heads=int(model_config.num_attention_heads),
        )


# The paper's students (docs/method.md, "Presets"). They are sized for a 768/3072/12-head teacher such as bert-base-uncased;
# for other teachers use `target_ratio` (or `WIDConfig.from_preset(name, ...)` with overrides).
PRESETS: dict[str, dict] = {
    "wid55": dict(target_hidden_size=516, target_intermediate_size=2064, head_strategy="dim"),
    "wid11": dict(target_hidden_size=192, target_intermediate_size=768, head_strategy="dim"),
    "wid11-head": dict(target_hidden_size=192, target_intermediate_size=768, head_strategy="head"),
}


@dataclass
class WIDConfig:
    """Configuration of a Weight-Inherited Distillation run.

    Example:
        >>> from wid_hf import WIDConfig
        >>> WIDConfig(target_hidden_size=516, target_intermediate_size=2064, head_strategy="dim").head_strategy
        'dim'
        >>> WIDConfig.from_preset("wid11").target_hidden_size
        192
        >>> WIDConfig(target_ratio=0.5).target_ratio  # sizes derived from the teacher at injection time
        0.5
    """

    _argument_group_name = "WID (WIDConfig)"  # the section of `wid-hf compress --help`

    target_hidden_size: Optional[int] = field(
        default=None,
        metadata={"help": "Hidden width of the student (also its attention width and MLM-head width)."},
    )
    target_intermediate_size: Optional[int] = field(
        default=None, metadata={"help": "FFN width (intermediate_size) of the student."}
    )
    target_ratio: Optional[float] = field(
        default=None,
        metadata={
            "aliases": ["--ratio"],
            "help": "Derive any target size left unset from the teacher: hidden = the valid width nearest to "
            "ratio * H, intermediate = round(ratio * F). In (0, 1]."
        },
    )
    head_strategy: Literal["dim", "head"] = field(
        default="dim",
        metadata={
            "help": "'dim': keep every head and remove the same number of dims from each (needs (H - T) divisible "
            "by the head count). 'head': remove whole heads (needs T divisible by the head size)."
        },
    )
    mask_interval: int = field(
        default=500, metadata={"help": "Optimizer steps between two recomputations of every mask."}
    )
    pruning_intervals: int = field(
        default=16,
        metadata={
            "help": "Mask intervals over which the FFN and MLM-head groups grow linearly to their targets "
            "(reference: 16, i.e. step 8,000). Under 'dim' the hidden and attention groups lose "
            "max(1, per_head // (pruning_intervals // 2)) dims per head per interval, as the reference code does."
        },
    )
    head_prune_every: int = field(
        default=2,
        metadata={"help": "Under 'head': mask intervals between two removed heads (reference: 2, one per 1,000 steps)."},
    )
    penalty_lambda: float = field(
        default=20.0,
        metadata={
            "help": "Strength of the decay of pruned entries: their gradient is replaced by min(lambda, 1) * W and "
            "their Adam first moment is pushed by 0.1 * (lambda - 1) * W each step."
        },
    )
    warmup_l2: float = field(
        default=1.0,
        metadata={"help": "Coefficient of the extra L2 gradient every compactor gets during the first interval."},
    )
    mask_scoring: Literal["reference", "aggregate", "taylor"] = field(
        default="reference",
        metadata={
            "help": "'reference': score each group on one compactor as the paper's code does (hidden: layer 0 value "
            "input compactor; attention/FFN: the layer's consuming input compactor; head: decoder input compactor). "
            "'aggregate': root of the summed squared norms of every compactor in the group. 'taylor': a moving "
            "average of |sum of G*W| over every compactor entry of the index, the first-order change of the loss "
            "if the index is removed."
        },
    )
    hard_masks: bool = field(
        default=True,
        metadata={
            "help": "When pruning ends, zero pruned entries exactly and keep them at zero, so the model being "
            "trained is the student and merge_and_unload is exact."
        },
    )
    decay: Literal["reference", "linear"] = field(
        default="reference",
        metadata={
            "help": "How pruned entries go to zero. 'reference': the penalty through the gradient and Adam's "
            "momentum (penalty_lambda). 'linear': pruned entries (and their LayerNorm and bias entries) shrink "
            "linearly from their value when pruned to exactly zero at the hard-mask step; their gradients and "
            "optimizer state are cleared. Needs hard_masks."
        },
    )
    monotone_masks: bool = field(
        default=False,
        metadata={
            "help": "Pruned indices stay pruned: each mask update prunes from the kept set only (the reference "
            "re-selects from scratch, so an index can come back)."
        },
    )
    pruning_start: int = field(
        default=0,
        metadata={"help": "Optimizer steps before the schedule's clock starts (the first selection comes one "
                          "mask_interval later). Reference: 0."},
    )
    taylor_init_batches: int = field(
        default=0,
        metadata={"help": "Under mask_scoring='taylor': before the first step, start the moving average of the scores "
                          "from the teacher's own first-order scores on this many training batches (WIDTrainer does "
                          "it), so the first selection need not wait for the average to build up. 0: start from "
                          "zero."},
    )
    taylor_window: int = field(
        default=TAYLOR_WINDOW,
        metadata={"help": "Under mask_scoring='taylor': the time constant, in optimizer steps, of the moving average "
                          "of the scores (each step folds in with weight 1/taylor_window): 10 averages over about "
                          "the last ten batches, as budget mode does (one mask interval was measured and not adopted: "
                          "docs/method.md, 'Budget mode')."},
    )
    taylor_per_compactor: bool = field(
        default=False,
        metadata={"help": "Under mask_scoring='taylor': score a training step per compactor, the sum over the group's "
                          "compactors of each one's |sum of G*W| (the form of the teacher's initial scores, in which "
                          "signed values cannot cancel), instead of |sum over the whole group| (the first-order change "
                          "of the loss if the index goes everywhere at once). Budget mode sets it (for_budget); false "
                          "there gives the group form it used before 2026-11-28 (docs/method.md, 'Budget mode')."},
    )
    train_dropout: Optional[float] = field(
        default=None,
        metadata={"help": "Dropout probability of every dropout layer of the model while it trains (embeddings, "
                          "attention, hidden); unset keeps the teacher's config (0.1 in BERT). Budget mode sets 0: a "
                          "budget run passes over its text about once, and without dropout it fitted better and ran "
                          "faster from 600 steps on (docs/method.md, 'Budget mode'). The merged student's config "
                          "keeps the teacher's values, so fine-tuning it later uses them."},
    )

    def __post_init__(self):
        if self.head_strategy not in HEAD_STRATEGIES:
            raise ValueError(f"head_strategy must be one of {HEAD_STRATEGIES}, got {self.head_strategy!r}.")
        if self.mask_scoring not in MASK_SCORINGS:
            raise ValueError(f"mask_scoring must be one of {MASK_SCORINGS}, got {self.mask_scoring!r}.")
        if self.decay not in DECAYS:
            raise ValueError(f"decay must be one of {DECAYS}, got {self.decay!r}.")
        if self.decay == "linear" and not self.hard_masks:
            raise ValueError("decay='linear' reaches zero at the hard-mask step: it needs hard_masks=True.")
        if not isinstance(self.pruning_start, int) or self.pruning_start < 0:
            raise ValueError(f"pruning_start must be an integer >= 0, got {self.pruning_start!r}.")
        if not isinstance(self.taylor_init_batches, int) or self.taylor_init_batches < 0:
            raise ValueError(f"taylor_init_batches must be an integer >= 0, got {self.taylor_init_batches!r}.")
        if not isinstance(self.taylor_window, int) or isinstance(self.taylor_window, bool) or self.taylor_window < 1:
            raise ValueError(f"taylor_window must be an integer >= 1 (optimizer steps), got {self.taylor_window!r}.")
        if self.taylor_per_compactor and self.mask_scoring != "taylor":
            raise ValueError("taylor_per_compactor is a form of the Taylor scores: it needs mask_scoring='taylor' "
                             f"(got {self.mask_scoring!r}).")
        if self.taylor_init_batches and self.mask_scoring != "taylor":
            raise ValueError("taylor_init_batches starts the Taylor scores' moving average: it needs "
                             f"mask_scoring='taylor' (got {self.mask_scoring!r}).")
        for name in ("target_hidden_size", "target_intermediate_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if self.target_ratio is not None and not (0.0 < float(self.target_ratio) <= 1.0):
            raise ValueError(f"target_ratio must be in (0, 1], got {self.target_ratio!r}.")
        if self.target_ratio is None and (self.target_hidden_size is None or self.target_intermediate_size is None):
            raise ValueError(
                "Give both target_hidden_size and target_intermediate_size, or a target_ratio for the sizes left "
                "unset (e.g. WIDConfig(target_ratio=0.5)), or use WIDConfig.from_preset('wid55' | 'wid11' | "
                "'wid11-head')."
            )
        for name in ("mask_interval", "pruning_intervals", "head_prune_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
        if self.penalty_lambda < 0 or self.warmup_l2 < 0:
            raise ValueError("penalty_lambda and warmup_l2 must be >= 0.")
        if self.train_dropout is not None and (isinstance(self.train_dropout, bool)
                                               or not 0.0 <= float(self.train_dropout) < 1.0):
            raise ValueError(f"train_dropout is a probability in [0, 1) (or None for the teacher's own), got "
                             f"{self.train_dropout!r}.")

    # ------------------------------------------------------------------ presets and teacher-dependent rules
    @classmethod
    def from_preset(cls, name: str, **overrides) -> "WIDConfig":
        """One of the paper's students: 'wid55', 'wid11', 'wid11-head' (sized for a 768-wide teacher)."""
        key = name.lower()
        if key not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
        return cls(**{**PRESETS[key], **overrides})

    @classmethod
    def for_budget(cls, max_steps: int, hard_mask_at: Optional[float] = None, **overrides) -> "WIDConfig":
        """Budget mode: WID for a run of `max_steps` optimizer steps (hundreds to tens of thousands), not the paper's
        400k. Indices are scored by first-order (Taylor) importance, each compactor's part taken on its own
        (`taylor_per_compactor`), starting from the teacher's own scores on `BUDGET_TAYLOR_INIT_BATCHES` training
        batches, so pruning can begin at once: the schedule runs nine equal intervals from step 0 to hard masks at
        `hard_mask_at` of the run (default `budget_hard_mask_at(max_steps)`: 55% below 1,000 steps, the first
        selection at about 6% and the targets at about 49%; 40% from 1,000 steps), and the student trains at its final
        shape for the rest. Pruned entries decay linearly to exactly zero, pruned stays pruned, no warm-up L2 shrinks
        the teacher, and the model trains without dropout. `overrides` are any WIDConfig fields (targets are required,
        as for WIDConfig). docs/method.md, "Budget mode", says why each differs from the reference.

            >>> c = WIDConfig.for_budget(1500, target_ratio=0.5)
            >>> c.pruning_start, c.mask_interval, c.pruning_intervals, c.mask_scoring, c.decay, c.taylor_init_batches
            (0, 66, 8, 'taylor', 'linear', 16)
            >>> c.taylor_per_compactor, c.train_dropout
            (True, 0.0)
        """
        if max_steps < 4:
            raise ValueError(f"budget mode needs at least 4 steps, got {max_steps}.")
        if hard_mask_at is None:
            hard_mask_at = budget_hard_mask_at(max_steps)
        if not 0.0 < hard_mask_at < 1.0:
            raise ValueError(f"hard_mask_at is the fraction of the run at which masks become hard, so it must lie in "
                             f"(0, 1); got {hard_mask_at}.")
        # 9 equal intervals from step 0 to hard_mask_at: the first selection, 7 more, then hard masks
        interval = max(1, math.floor(max_steps * hard_mask_at / 9 + 1e-9))
        room = max_steps // interval - 1  # intervals that fit before the hard-mask interval
        settings = dict(pruning_start=0, mask_interval=interval, pruning_intervals=max(1, min(8, room)),
                        head_prune_every=1, mask_scoring="taylor", taylor_init_batches=BUDGET_TAYLOR_INIT_BATCHES,
                        taylor_per_compactor=True, decay="linear", monotone_masks=True, warmup_l2=0.0,
                        train_dropout=BUDGET_TRAIN_DROPOUT)
        if overrides.get("mask_scoring", "taylor") != "taylor":
            # both start or shape the Taylor scores: nothing to start or shape under another scoring
            settings.update(taylor_init_batches=0, taylor_per_compactor=False)
        return cls(**{**settings, **overrides})

    def resolve(self, model_config) -> "WIDConfig":
        """Return a copy with concrete target sizes for this teacher, or raise `ValueError` naming the broken rule
        and the nearest valid sizes."""
        dims = model_config if isinstance(model_config, TeacherDims) else TeacherDims.from_model_config(model_config)
        hidden, ffn = self.target_hidden_size, self.target_intermediate_size
        if hidden is None:
            hidden = _nearest_valid_hidden(dims, self.head_strategy, self.target_ratio * dims.hidden_size)
        if ffn is None:
            ffn = max(1, round(self.target_ratio * dims.intermediate_size))
        resolved = dataclasses.replace(self, target_hidden_size=hidden, target_intermediate_size=ffn)
        resolved.validate_for(dims)
        return resolved

    def validate_for(self, dims: TeacherDims) -> None:
        H, F, A, h = dims.hidden_size, dims.intermediate_size, dims.num_attention_heads, dims.head_size
        T, Ft = self.target_hidden_size, self.target_intermediate_size
        unit = A if self.head_strategy == "dim" else h
        if T > H:
            raise ValueError(
                f"target_hidden_size={T} is larger than the teacher's hidden_size={H}; WID only shrinks. "
                f"Nearest valid sizes: {_valid_neighbours(min(T, H), unit, H)}."
            )
        if Ft > F:
            raise ValueError(
                f"target_intermediate_size={Ft} is larger than the teacher's intermediate_size={F}; WID only shrinks."
            )
        if self.head_strategy == "dim" and (H - T) % A != 0:
            raise ValueError(
                f'head_strategy="dim" keeps all {A} heads and removes the same number of dims from each, so '
                f"(hidden_size - target_hidden_size) = {H} - {T} must be divisible by {A}. "
                f"Nearest valid target_hidden_size: {_valid_neighbours(T, A, H)}."
            )
        if self.head_strategy == "head" and T % h != 0:
            raise ValueError(
                f'head_strategy="head" removes whole heads of size {h}, so target_hidden_size={T} must be divisible '
                f"by {h}. Nearest valid target_hidden_size: {_valid_neighbours(T, h, H)}."
            )

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        """Write `wid_config.json` (the layout of a WID state, without its tensors); returns its path."""
        return write_wid_config(save_directory, self.to_dict())

    @classmethod
    def from_dict(cls, data: dict) -> "WIDConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            logger.warning("Ignoring unknown WIDConfig keys (written by a newer wid_hf?): %s", unknown)
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "WIDConfig":
        """Load from a directory holding `wid_config.json`, or from the JSON file itself."""
        return cls.from_dict(read_wid_config(path)["wid_config"])


def _valid_neighbours(value: float, unit: int, maximum: int) -> list[int]:
    """The multiples of `unit` in [unit, maximum] closest to `value` from below and above."""
    below = max(unit, min(maximum, math.floor(value / unit) * unit))
    above = max(unit, min(maximum, math.ceil(value / unit) * unit))
    return sorted({below, above})


def _nearest_valid_hidden(dims: TeacherDims, strategy: str, value: float) -> int:
    unit = dims.num_attention_heads if strategy == "dim" else dims.head_size
    return max(unit, min(dims.hidden_size, round(value / unit) * unit))
