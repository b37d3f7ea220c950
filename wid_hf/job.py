"""The whole WID job in one call (what `wid-hf compress` runs): teacher -> corpus -> WIDTrainer -> merged student ->
teacher-vs-student report. Re-running the same job in the same output directory resumes it.

    >>> from wid_hf.job import CompressJob, run_compress
    >>> report = run_compress(CompressJob(output_dir="runs/demo"))        # doctest: +SKIP

Output directory layout::

    job.json            what was asked (a re-run must ask the same to resume)
    cache/              tokenised corpora
    teacher/            the teacher after its MLM-head warm-up (only for a teacher without an MLM head)
    checkpoints/        WIDTrainer checkpoints (resumable)
    student/            the merged student: plain BertForMaskedLM + tokenizer
    report.json, report.md, training.png, schedule.png
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

import torch

from . import __version__
from .config import PRESETS, TeacherDims, WIDConfig

logger = logging.getLogger(__name__)

# Job-level presets: the WID targets and schedule, and the training length that goes with them.
JOB_PRESETS: dict[str, dict] = {
    # Halve every width of the teacher in ~10 minutes on 2 CPU cores: a short schedule (targets by step 80, hard
    # masks at 90) and learning rates large enough for pruned entries to decay within it.
    "demo": dict(wid=dict(target_ratio=0.5, mask_interval=10, pruning_intervals=8), max_steps=150, batch_size=8,
                 seq_len=128, learning_rate=1e-4, compactor_learning_rate=2e-3, head_warmup_steps=100,
                 eval_sequences=64),
    # The paper's students with the reference schedule and optimisation (WID_SPEC.md §6; batch 960 = 8 x 120).
    **{name: dict(wid=dict(PRESETS[name]), max_steps=400_000, batch_size=32, seq_len=128, learning_rate=1e-6,
                  compactor_learning_rate=5e-5, head_warmup_steps=1000, eval_sequences=256) for name in PRESETS},
}

# Fields whose change makes an existing checkpoint a different job.
_IDENTITY = ("teacher", "corpus", "text_column", "seq_len", "wid", "max_steps", "batch_size", "gradient_accumulation_steps",
             "learning_rate", "compactor_learning_rate", "seed", "head_warmup_steps", "kd_objective", "keep_layers")


@dataclass
class CompressJob:
    output_dir: str
    teacher: Optional[str] = None  # None: the offline MiniLM
    corpus: Optional[str] = None  # None: offline Wikipedia leads
    eval_corpus: Optional[str] = None  # None: offline BBC News
    text_column: str = "text"
    preset: str = "demo"
    target_hidden_size: Optional[int] = None
    target_intermediate_size: Optional[int] = None
    target_ratio: Optional[float] = None
    head_strategy: Optional[str] = None
    mask_interval: Optional[int] = None
    pruning_intervals: Optional[int] = None
    max_steps: Optional[int] = None
    batch_size: Optional[int] = None
    gradient_accumulation_steps: int = 1
    seq_len: Optional[int] = None
    learning_rate: Optional[float] = None
    compactor_learning_rate: Optional[float] = None
    head_warmup_steps: Optional[int] = None
    eval_sequences: Optional[int] = None
    kd_objective: Optional[str] = None  # beyond the paper: WID + a KD objective against the teacher
    keep_layers: Optional[object] = None  # beyond the paper: WID + depth reduction (list or lower:N/upper:N/uniform:N)
    save_steps: int = 50
    seed: int = 0
    bf16: bool = False
    overwrite: bool = False
    progressbar: bool = True
    wid: dict = field(default_factory=dict, init=False)

    def __post_init__(self):
        if self.preset not in JOB_PRESETS:
            raise ValueError(f"Unknown preset {self.preset!r}; choose one of {sorted(JOB_PRESETS)}.")
        preset = JOB_PRESETS[self.preset]
        for name in ("max_steps", "batch_size", "seq_len", "learning_rate", "compactor_learning_rate",
                     "head_warmup_steps", "eval_sequences"):
            if getattr(self, name) is None:
                setattr(self, name, preset[name])
        wid = dict(preset["wid"])
        sizes_given = self.target_hidden_size is not None or self.target_intermediate_size is not None
        if sizes_given or self.target_ratio is not None:
            for key in ("target_hidden_size", "target_intermediate_size", "target_ratio"):
                wid.pop(key, None)
            if self.target_ratio is not None:
                wid["target_ratio"] = self.target_ratio
            if self.target_hidden_size is not None:
                wid["target_hidden_size"] = self.target_hidden_size
            if self.target_intermediate_size is not None:
                wid["target_intermediate_size"] = self.target_intermediate_size
        for key in ("head_strategy", "mask_interval", "pruning_intervals"):
            if getattr(self, key) is not None:
                wid[key] = getattr(self, key)
        self.wid = wid
        WIDConfig(**wid)  # validate early, before any download or training
        for name in ("max_steps", "batch_size", "seq_len", "eval_sequences"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1.")

    def identity(self) -> dict:
        return {k: getattr(self, k) for k in _IDENTITY}

    def wid_config(self) -> WIDConfig:
        return WIDConfig(**self.wid)


class JobMismatchError(ValueError):
    pass


def _check_output_dir(job: CompressJob) -> None:
    path = os.path.join(job.output_dir, "job.json")
    if os.path.isfile(path) and not job.overwrite:
        try:
            with open(path) as f:
                previous = json.load(f)["identity"]
        except (OSError, ValueError, KeyError) as err:
            raise JobMismatchError(f"{path} is unreadable ({err}); use another --output-dir or --overwrite.") from err
        current = json.loads(json.dumps(job.identity()))
        trained = glob.glob(os.path.join(job.output_dir, "checkpoints", "checkpoint-*")) or os.path.isdir(
            os.path.join(job.output_dir, "teacher", "final"))
        if previous != current and trained:
            changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
            raise JobMismatchError(
                f"{job.output_dir} holds the checkpoint of a different job (changed: {', '.join(changed)}); use another "
                "--output-dir, or --overwrite to start over there."
            )
    elif os.path.isdir(job.output_dir) and os.listdir(job.output_dir) and not job.overwrite:
        raise JobMismatchError(
            f"{job.output_dir} exists and is not a wid-hf job directory; use an empty or new --output-dir."
        )
    if job.overwrite and os.path.isdir(job.output_dir):
        import shutil

        shutil.rmtree(job.output_dir)
    os.makedirs(job.output_dir, exist_ok=True)
    with open(path, "w") as f:
        json.dump({"identity": job.identity(), "job": dataclasses.asdict(job), "wid_hf": __version__}, f, indent=2)


def _finished_report(job: CompressJob) -> Optional[dict]:
    """The report of a finished run of this very job, or None. report.json is written last and atomically, so its
    presence with the job's settings means the student, plots and report are all complete."""
    path = os.path.join(job.output_dir, "report.json")
    if job.overwrite or not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            report = json.load(f)
    except (OSError, ValueError):
        return None
    same = report.get("identity") == json.loads(json.dumps(job.identity()))
    student = report.get("student", {}).get("path")
    return report if same and student and os.path.isfile(os.path.join(student, "config.json")) else None


def _check_schedule_fits(job: CompressJob, wid_config: WIDConfig, dims: TeacherDims) -> None:
    """A schedule that cannot reach hard masks within --steps would give an inexact student: refuse it up front."""
    from .schedule import pruning_end_step

    end = pruning_end_step(wid_config, dims)
    interval = wid_config.mask_interval
    last = end + interval if wid_config.hard_masks else end
    if last <= job.max_steps:
        return
    fits = max(1, job.max_steps // (last // interval))  # the same number of intervals, shorter
    raise ValueError(
        f"--steps {job.max_steps} ends before the pruning schedule does (targets at step {end}, hard masks at step "
        f"{last}): use --steps {last} or more, or --mask-interval {fits} or less."
    )


def _say(message: str) -> None:
    logger.info(message)
    print(f"[wid-hf] {message}", flush=True)


def run_compress(job: CompressJob) -> dict:
    """Run (or resume) the whole job; returns the report dictionary. A job whose report is already written (with the
    same settings) is finished: it is returned as it is, and nothing is trained or written."""
    from transformers import DataCollatorForLanguageModeling, TrainerState, set_seed

    from .data import heldout_sequences, prepare_corpus
    from .evaluation import bert_mlm_forward_flops, evaluate_mlm, inference_throughput
    from .model import get_wid_model
    from .plotting import plot_schedule, plot_training
    from .resume import checkpoint_step, last_complete_checkpoint, save_pretrained_atomically, write_json_atomically
    from .teacher import adapt_mlm, load_teacher
    from .trainer import WIDTrainer, WIDTrainingArguments
    from .utils import bert_mlm_parameter_count, count_parameters

    started = time.time()
    _check_output_dir(job)
    finished = _finished_report(job)
    if finished is not None:
        _say(f"this job is already finished: the student is in {finished['student']['path']}, the report in "
             f"{os.path.join(job.output_dir, 'report.md')} (use --overwrite to run it again)")
        return finished
    set_seed(job.seed)
    cache = os.path.join(job.output_dir, "cache")
    loaded = load_teacher(job.teacher)
    teacher, tokenizer = loaded.model, loaded.tokenizer
    wid_config = job.wid_config().resolve(TeacherDims.from_model_config(teacher.config))  # unmergeable -> error now
    _check_schedule_fits(job, wid_config, TeacherDims.from_model_config(teacher.config))

    train = prepare_corpus(job.corpus, tokenizer, job.seq_len, cache, job.text_column)
    heldout = heldout_sequences(job.eval_corpus, tokenizer, job.seq_len, job.eval_sequences, cache)
    _say(f"corpus: {len(train):,} sequences of {job.seq_len} tokens; held-out: {len(heldout)} sequences")

    head_note = None
    if not loaded.has_mlm_head:
        warmed = os.path.join(job.output_dir, "teacher")
        head_note = (f"the teacher has no MLM head: a fresh head was trained for {job.head_warmup_steps} steps on the "
                     "corpus (encoder frozen) before compactors were injected")
        if os.path.isfile(os.path.join(warmed, "final", "config.json")):
            _say("reusing the teacher's warmed-up MLM head from " + warmed)
            from transformers import BertForMaskedLM

            teacher = BertForMaskedLM.from_pretrained(os.path.join(warmed, "final"))
        else:
            _say(head_note.replace("was trained", "is trained").replace("were injected", "are injected"))
            teacher = adapt_mlm(teacher, tokenizer, train, warmed, max_steps=job.head_warmup_steps,
                                batch_size=job.batch_size, head_lr=2e-3, encoder_lr=0.0, warmup_steps=10,
                                seed=job.seed, disable_tqdm=not job.progressbar)
    teacher_eval = evaluate_mlm(teacher, heldout, progressbar=job.progressbar, desc="Teacher eval")
    teacher_speed = inference_throughput(teacher, batch_size=min(32, job.batch_size * 4), seq_len=job.seq_len)
    teacher_config = teacher.config

    source = teacher
    if job.keep_layers is not None:
        from .baselines.etd import select_layers
        from .cli import resolve_layers

        source = select_layers(teacher, resolve_layers(job.keep_layers, teacher_config.num_hidden_layers))
    elif job.kd_objective:
        import copy

        source = copy.deepcopy(teacher)  # the teacher itself stays frozen for the KD term
    model = get_wid_model(source, wid_config)
    args = WIDTrainingArguments(
        output_dir=os.path.join(job.output_dir, "checkpoints"),
        max_steps=job.max_steps,
        per_device_train_batch_size=job.batch_size,
        gradient_accumulation_steps=job.gradient_accumulation_steps,
        learning_rate=job.learning_rate,
        compactor_learning_rate=job.compactor_learning_rate,
        logging_steps=max(1, min(10, job.max_steps // 20)),
        save_strategy="steps",
        save_steps=job.save_steps,
        save_total_limit=2,
        report_to=[],
        seed=job.seed,
        bf16=job.bf16,
        disable_tqdm=not job.progressbar,
    )
    trainer_cls, extra = WIDTrainer, {}
    if job.kd_objective:
        from .baselines.distill import WIDDistillationTrainer

        trainer_cls, extra = WIDDistillationTrainer, dict(teacher=teacher, objective=job.kd_objective, alpha=0.5)
    trainer = trainer_cls(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                          data_collator=DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15), **extra)
    last = last_complete_checkpoint(args.output_dir, say=_say)
    train_started = time.time()
    if last and checkpoint_step(last) >= job.max_steps:
        # killed after training, during the merge or the report: finish from the final checkpoint, train nothing
        _say(f"training already complete in {last}; merging")
        trainer._load_from_checkpoint(last)
        trainer.state = TrainerState.load_from_json(os.path.join(last, "trainer_state.json"))
    else:
        if last:
            _say(f"resuming from {last}")
        trainer.train(resume_from_checkpoint=last)
    train_seconds = time.time() - train_started

    student_dir = os.path.join(job.output_dir, "student")
    probe = {"input_ids": torch.tensor(heldout[:4]["input_ids"])}
    student = model.merge_and_unload(progressbar=job.progressbar, probe_inputs=probe)
    save_pretrained_atomically(student_dir, student, tokenizer)
    deviation = model.last_merge_deviation
    student_eval = evaluate_mlm(student, heldout, progressbar=job.progressbar, desc="Student eval")
    student_speed = inference_throughput(student, batch_size=min(32, job.batch_size * 4), seq_len=job.seq_len)

    plot_training(trainer.state, os.path.join(job.output_dir, "training.png"), title="WID: widths and loss")
    plot_schedule(model.wid_config, model.teacher_dims, os.path.join(job.output_dir, "schedule.png"),
                  steps=job.max_steps)

    teacher_params = bert_mlm_parameter_count(teacher_config, include_decoder=False)
    student_params = count_parameters(student)
    # the untied decoder matrix (and its duplicate bias) exist only because merging unties them; the teacher's
    # own count has them tied, so the ratio compares like with like
    student_core = student_params - student.cls.predictions.decoder.weight.numel() - student.cls.predictions.bias.numel()
    report = {
        "wid_hf_version": __version__,
        "teacher": {"source": loaded.source, "has_mlm_head": loaded.has_mlm_head, "head_warmup": head_note,
                    "hidden_size": teacher_config.hidden_size, "intermediate_size": teacher_config.intermediate_size,
                    "num_attention_heads": teacher_config.num_attention_heads,
                    "num_hidden_layers": teacher_config.num_hidden_layers, "parameters_tied": teacher_params,
                    "parameters_untied": bert_mlm_parameter_count(teacher_config, include_decoder=True),
                    "license": loaded.license},
        "student": {"hidden_size": student.config.hidden_size, "intermediate_size": student.config.intermediate_size,
                    "num_hidden_layers": student.config.num_hidden_layers, "kd_objective": job.kd_objective,
                    "num_attention_heads": student.config.num_attention_heads,
                    "parameters": student_params,
                    "parameters_without_decoder": student_core,
                    "path": student_dir, "merge_max_abs_deviation": deviation},
        "compression_ratio": teacher_params / student_core,
        "wid_config": model.wid_config.to_dict(),
        "training": {"steps": trainer.state.global_step, "batch_size": job.batch_size, "seq_len": job.seq_len,
                     "gradient_accumulation_steps": job.gradient_accumulation_steps,
                     "learning_rate": job.learning_rate, "compactor_learning_rate": job.compactor_learning_rate,
                     "corpus": job.corpus or "offline-wiki", "train_sequences": len(train),
                     "final_loss": next((h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), None),
                     "seconds": train_seconds},
        "heldout": {"corpus": job.eval_corpus or "offline-bbc", "sequences": len(heldout),
                    "teacher": teacher_eval, "student": student_eval},
        "inference": {"device": str(next(student.parameters()).device), "threads": torch.get_num_threads(),
                      "teacher": teacher_speed, "student": student_speed,
                      "speedup": teacher_speed["batch_s"] / student_speed["batch_s"],
                      "flop_ratio": bert_mlm_forward_flops(teacher_config, job.seq_len)
                      / bert_mlm_forward_flops(student.config, job.seq_len)},
        "wall_seconds": time.time() - started,
    }
    report["identity"] = json.loads(json.dumps(job.identity()))
    with open(os.path.join(job.output_dir, "report.md"), "w") as f:
        f.write(render_report(report))
    write_json_atomically(os.path.join(job.output_dir, "report.json"), report)  # last: its presence means finished
    _say(f"student saved to {student_dir}; report in {os.path.join(job.output_dir, 'report.md')}")
    return report


def render_report(r: dict) -> str:
    t, s, h, inf = r["teacher"], r["student"], r["heldout"], r["inference"]
    lines = [
        "# WID compression report",
        "",
        f"Teacher `{t['source']}` -> student saved at `{s['path']}` (loads with plain "
        "`BertForMaskedLM.from_pretrained`).",
        "",
        "| | teacher | student |",
        "|---|---|---|",
        f"| layers / hidden / heads / FFN | {t['num_hidden_layers']} / {t['hidden_size']} / {t['num_attention_heads']} / "
        f"{t['intermediate_size']} | {s['num_hidden_layers']} / {s['hidden_size']} / {s['num_attention_heads']} / "
        f"{s['intermediate_size']} |",
        f"| parameters (decoder tied / untied) | {t['parameters_tied']:,} / {t['parameters_untied']:,} | "
        f"{s['parameters_without_decoder']:,} / {s['parameters']:,} |",
        f"| held-out masked-LM loss ({h['corpus']}, {h['sequences']} seqs) | {h['teacher']['mlm_loss']:.3f} | "
        f"{h['student']['mlm_loss']:.3f} |",
        f"| held-out masked-LM accuracy | {h['teacher']['mlm_accuracy']:.3f} | {h['student']['mlm_accuracy']:.3f} |",
        f"| inference, median s per batch of {inf['teacher']['batch_size']}x{inf['teacher']['seq_len']} "
        f"({inf['device']}, {inf['threads']} threads) | {inf['teacher']['batch_s']:.3f} | {inf['student']['batch_s']:.3f} |",
        "",
        f"- compression ratio (parameters without the MLM decoder, teacher tied): **{r['compression_ratio']:.2f}x**",
        f"- inference speed-up: **{inf['speedup']:.2f}x** measured, {inf['flop_ratio']:.2f}x by FLOPs",
        f"- training: {r['training']['steps']} steps of {r['training']['batch_size']}x{r['training']['seq_len']} on "
        f"`{r['training']['corpus']}` ({r['training']['train_sequences']:,} sequences), "
        f"{r['training']['seconds'] / 60:.1f} min; final training loss {r['training']['final_loss']}",
        f"- merge check: max abs logit deviation {s['merge_max_abs_deviation']:.2e} between the WID model and the student",
        f"- wall time of the whole job: {r['wall_seconds'] / 60:.1f} min",
    ]
    if t.get("head_warmup"):
        lines.append(f"- note: {t['head_warmup']}")
    lines += ["", "![widths and loss](training.png)", "", "![schedule](schedule.png)", ""]
    return "\n".join(lines)
