"""The one pipeline's settings: presets, the budget schedule, the CLI's field-named flags and their old aliases, and
job directories written by wid_hf 0.1.0 (their job.json identity must match, or they could not resume)."""

import json
import re
import subprocess
import sys

import pytest
from conftest import ROOT

from wid_hf.cli import parse_dataclass_command
from wid_hf.config import WIDConfig
from wid_hf.pipeline import (BUDGET_COMPACTOR_LEARNING_RATE, BUDGET_LEARNING_RATE, JOB_PRESETS, STUDENT_LEARNING_RATE,
                             Job, JobMismatchError, _check_output_dir, budget_schedule)

# job.json "identity" of `wid-hf compress --output-dir runs/demo`, as wid_hf 0.1.0 (before the pipeline) wrote it
OLD_DEMO_IDENTITY = {"teacher": None, "corpus": None, "text_column": "text", "seq_len": 128,
                     "wid": {"target_ratio": 0.5, "mask_interval": 10, "pruning_intervals": 8}, "max_steps": 150,
                     "batch_size": 8, "gradient_accumulation_steps": 1, "learning_rate": 1e-4,
                     "compactor_learning_rate": 2e-3, "seed": 0, "head_warmup_steps": 100, "kd_objective": None,
                     "keep_layers": None}


def test_demo_job_keeps_the_identity_of_earlier_job_directories():
    # the 0.1.0 demo, asked for explicitly (the demo now runs budget mode with an adapted teacher): same identity
    old_demo = Job.create(output_dir="x", budget_mode=False, max_steps=150, mask_interval=10, pruning_intervals=8,
                          head_warmup_steps=100, warmup_encoder_learning_rate=0.0)
    assert old_demo.identity() == OLD_DEMO_IDENTITY
    assert Job.create(output_dir="x").identity()["warmup_encoder_lr"] == 3e-4
    old = {**OLD_DEMO_IDENTITY, "kd_objective": "attention_kl", "keep_layers": "upper:1", "max_steps": 12,
           "wid": {"target_ratio": 0.5, "mask_interval": 2, "pruning_intervals": 2}}
    new = Job.create(output_dir="x", objective="attention_kl", keep_layers="upper:1", max_steps=12, mask_interval=2,
                     pruning_intervals=2, head_warmup_steps=100, warmup_encoder_learning_rate=0.0)
    assert new.identity() == old
    # the paper's presets: sizes and strategy as the preset wrote them, learning rates from WIDTrainingArguments
    wid55 = Job.create(output_dir="x", preset="wid55").identity()
    assert wid55["wid"] == {"target_hidden_size": 516, "target_intermediate_size": 2064, "head_strategy": "dim"}
    assert (wid55["learning_rate"], wid55["compactor_learning_rate"], wid55["max_steps"]) == (1e-6, 5e-5, 400_000)
    # --warmup_steps joins the identity only when given (earlier directories keep theirs), and reaches the Trainer
    assert "warmup_steps" not in Job.create(output_dir="x").identity()
    # ETD-Impt's importance sample: 64 by default, in the identity unless it is 16 (the default until 2026-11-28), so
    # earlier directories resume as they ran and are not taken for today's default
    assert Job.create(output_dir="x", method="etd-impt").identity()["importance_batches"] == 64
    assert "importance_batches" not in Job.create(output_dir="x", method="etd-impt", importance_batches=16).identity()
    warm = Job.create(output_dir="x", method="etd-impt", warmup_steps=0.1)
    assert warm.identity()["warmup_steps"] == 0.1
    assert warm.training_arguments("x").warmup_steps == 0.1
    assert Job.create(output_dir="x").training_arguments("x").warmup_steps == 0.01  # WIDTrainingArguments' default
    # --mlm_probability likewise joins the identity only when it is not BERT's 15% (the only rate before 2026-12-06):
    # budget mode's 30% is recorded, the reference method's and the paper presets' 15% is not
    assert "mlm_probability" not in Job.create(output_dir="x", mlm_probability=0.15).identity()
    assert Job.create(output_dir="x").identity()["mlm_probability"] == 0.3
    for settings in (dict(budget_mode=False), dict(preset="wid55"), dict(mask_interval=10, pruning_intervals=8)):
        job = Job.create(output_dir="x", **settings)
        assert job.data.mlm_probability == 0.15 and "mlm_probability" not in job.identity(), settings


def test_presets_budget_schedule_and_method_defaults():
    demo = Job.create(output_dir="x")  # budget mode for the preset's 300 steps, with its learning rates
    budget = WIDConfig.for_budget(300, target_ratio=0.5)
    assert (demo.wid.mask_interval, demo.wid.pruning_start, demo.wid.mask_scoring) == (18, 0, "taylor")
    assert demo.wid.taylor_init_batches == 16
    assert demo.wid == budget
    assert (demo.training.learning_rate, demo.training.compactor_learning_rate) == (
        BUDGET_LEARNING_RATE, BUDGET_COMPACTOR_LEARNING_RATE)
    reference = Job.create(output_dir="x", budget_mode=False)  # the reference method on the scaled schedule
    assert (reference.wid.mask_interval, reference.wid.mask_scoring) == (budget_schedule(300)["mask_interval"],
                                                                         "reference")
    short = Job.create(output_dir="x", max_steps=300)
    assert short.wid.mask_interval == 18 and budget_schedule(300)["mask_interval"] == 15
    assert budget_schedule(120) == {"mask_interval": 6, "pruning_intervals": 8}
    assert budget_schedule(4) == {"mask_interval": 1, "pruning_intervals": 3}  # hard masks at step 4: still fits
    given = Job.create(output_dir="x", max_steps=300, mask_interval=4)
    assert (given.wid.mask_interval, given.wid.pruning_intervals) == (4, WIDConfig.pruning_intervals)  # the default
    paper = Job.create(output_dir="x", preset="wid11", max_steps=300)
    assert paper.wid.mask_interval == 500  # the paper's presets keep the reference schedule
    # sizes given replace the preset's sizes (a ratio does not fight explicit widths)
    sized = Job.create(output_dir="x", preset="wid55", target_ratio=0.5)
    assert (sized.wid.target_hidden_size, sized.wid.target_ratio) == (None, 0.5)
    assert Job.create(output_dir="x", method="etd-impt").training.learning_rate == STUDENT_LEARNING_RATE
    assert reference.training.learning_rate == JOB_PRESETS["demo"]["learning_rate"]
    assert Job.create(output_dir="x", keep_layers="0,2").job.keep_layers == [0, 2]


@pytest.mark.parametrize("settings, message", [
    (dict(steps=3), "unknown job settings"),
    (dict(preset="wid99"), "Unknown preset"),
    (dict(method="distil"), "method must be one of"),
    (dict(max_steps=0), "--max_steps must be at least 1"),
    (dict(keep_layers="top:2"), "lower:N"),
    (dict(method="etd-impt", importance_batches=0), "--importance_batches must be at least 1"),
    (dict(importance_batches=32), "--taylor_init_batches"),
    (dict(mlm_probability=0.0), "--mlm_probability must lie strictly between 0 and 1"),
    (dict(mlm_probability=15), "--mlm_probability must lie strictly between 0 and 1"),
])
def test_bad_job_settings_say_what_to_do(settings, message):
    with pytest.raises((TypeError, ValueError), match=message):
        Job.create(output_dir="x", **settings)


def test_cli_flags_are_field_names_and_old_flags_still_work():
    old = parse_dataclass_command("compress", ["--output-dir", "o", "--steps", "12", "--ratio", "0.5", "--batch-size",
                                               "4", "--seq-len", "32", "--no-progress", "--kd", "logit", "--layers",
                                               "lower:2", "--overwrite", "--mask-interval", "2"])
    new = parse_dataclass_command("compress", ["--output_dir", "o", "--max_steps", "12", "--target_ratio", "0.5",
                                               "--per_device_train_batch_size", "4", "--max_seq_length", "32",
                                               "--disable_tqdm", "--objective", "logit", "--keep_layers", "lower:2",
                                               "--overwrite_output_dir", "--mask_interval", "2"])
    assert old == new == {"output_dir": "o", "max_steps": 12, "target_ratio": 0.5, "per_device_train_batch_size": 4,
                          "max_seq_length": 32, "disable_tqdm": True, "objective": "logit", "keep_layers": "lower:2",
                          "overwrite_output_dir": True, "mask_interval": 2}
    # only what was typed is returned: the preset fills in the rest
    assert parse_dataclass_command("compress", ["--output-dir", "o"]) == {"output_dir": "o"}
    # every WIDConfig field is a flag
    assert parse_dataclass_command("compress", ["--output-dir", "o", "--mask_scoring", "aggregate",
                                                "--no_hard_masks"]) == {"output_dir": "o", "mask_scoring": "aggregate",
                                                                        "hard_masks": False}
    with pytest.raises(SystemExit) as exited:
        parse_dataclass_command("baseline", ["--output-dir", "o"])
    assert exited.value.code == 2


def test_help_comes_from_the_dataclasses_and_is_fast_to_import():
    out = subprocess.run([sys.executable, "-m", "wid_hf", "compress", "--help"], capture_output=True, text=True,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    for text in ("job:", "data:", "training:", "WID (WIDConfig):", "--max_steps", "--steps", "--mask_scoring",
                 "Strength of the decay of pruned entries", "--per_device_train_batch_size"):
        assert text in out.stdout, text
    # building the parser imports neither torch nor transformers' Trainer
    probe = ("import sys; from wid_hf.cli import dataclass_parser; dataclass_parser('compress'); "
             "print('torch' in sys.modules, 'transformers.trainer' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_objectives_are_the_distillation_trainers():
    from wid_hf.baselines.distill import OBJECTIVES as TRAINER_OBJECTIVES
    from wid_hf.pipeline import OBJECTIVES

    assert OBJECTIVES == TRAINER_OBJECTIVES  # the pipeline keeps its own copy so that --help does not import torch


def test_a_demo_job_given_only_its_length_runs_in_budget_mode():
    from wid_hf.pipeline import BUDGET_COMPACTOR_LEARNING_RATE, BUDGET_LEARNING_RATE

    job = Job.create(output_dir="x", max_steps=300)
    w = job.wid
    assert (w.mask_scoring, w.decay, w.monotone_masks, w.warmup_l2) == ("taylor", "linear", True, 0.0)
    assert (w.pruning_start, w.mask_interval, w.pruning_intervals, w.target_ratio) == (0, 18, 8, 0.5)
    assert (w.taylor_init_batches, w.taylor_per_compactor) == (16, True)
    assert (job.training.learning_rate, job.training.compactor_learning_rate) == (BUDGET_LEARNING_RATE,
                                                                                  BUDGET_COMPACTOR_LEARNING_RATE)
    # anything given wins; --budget_mode false is the reference method on the same scaled schedule
    aggregate = Job.create(output_dir="x", max_steps=300, mask_scoring="aggregate").wid
    assert (aggregate.mask_scoring, aggregate.taylor_init_batches, aggregate.taylor_per_compactor) == (
        "aggregate", 0, False)
    aggregate = WIDConfig.for_budget(300, target_ratio=0.5, mask_scoring="aggregate")
    assert (aggregate.taylor_init_batches, aggregate.taylor_per_compactor) == (0, False)
    group_form = Job.create(output_dir="x", max_steps=300, taylor_per_compactor=False).wid  # the earlier form
    assert (group_form.mask_scoring, group_form.taylor_per_compactor) == ("taylor", False)
    reference = Job.create(output_dir="x", max_steps=300, budget_mode=False)
    assert (reference.wid.mask_scoring, reference.wid.decay, reference.wid.mask_interval) == ("reference",
                                                                                            "reference", 15)
    assert reference.training.learning_rate == JOB_PRESETS["demo"]["learning_rate"]
    # baselines keep a plain student's learning rate
    assert Job.create(output_dir="x", max_steps=300, method="etd-impt").training.learning_rate == STUDENT_LEARNING_RATE
    sized = Job.create(output_dir="x", max_steps=300, target_hidden_size=192, target_intermediate_size=768)
    assert (sized.wid.target_hidden_size, sized.wid.target_ratio, sized.wid.decay) == (192, None, "linear")
    # --hard_mask_at moves budget mode's hard-mask step (75% of 300 steps: nine intervals of 25 from step 0)
    later = Job.create(output_dir="x", max_steps=300, hard_mask_at=0.75).wid
    assert (later.pruning_start, later.mask_interval, later.pruning_intervals, later.decay) == (0, 25, 8, "linear")
    for elsewhere in (dict(budget_mode=False), dict(mask_interval=10), dict(preset="wid55")):
        with pytest.raises(ValueError, match="hard_mask_at"):
            Job.create(output_dir="x", max_steps=300, hard_mask_at=0.75, **elsewhere)


def test_budget_mode_trains_every_methods_model_without_dropout(tmp_path, monkeypatch):
    from torch import nn

    from conftest import mlm_dataset, tiny_teacher, tiny_tokenizer
    from wid_hf.baselines.weight_distillation import WeightGenerator
    from wid_hf.pipeline import build_trainer

    generator_dropout, forward = [], WeightGenerator.forward

    def recording_forward(self, *args, **kwargs):  # Weight Distillation's generator phase trains inside build_trainer
        generator_dropout.append({m.p for m in self.modules() if isinstance(m, nn.Dropout)})
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(WeightGenerator, "forward", recording_forward)
    teacher, tokenizer = tiny_teacher(dropout=0.1), tiny_tokenizer(tmp_path / "tokenizer")
    for settings, expected in ((dict(method="wid"), 0.0), (dict(method="random"), 0.0),
                               (dict(method="weight-distill"), 0.0),
                               (dict(method="random", train_dropout=0.2), 0.2),
                               (dict(method="random", budget_mode=False), 0.1)):  # unset: the teacher's
        job = Job.create(output_dir=str(tmp_path / "job"), max_steps=20, target_hidden_size=24,
                         target_intermediate_size=40, **settings)
        trainer = build_trainer(job, teacher, tokenizer, mlm_dataset(), job.wid.resolve(teacher.config), None)
        assert {m.p for m in trainer.model.modules() if isinstance(m, nn.Dropout)} == {expected}, settings
        assert trainer.model.config.hidden_dropout_prob == 0.1  # a saved student keeps the teacher's
    assert generator_dropout and all(p == {0.0} for p in generator_dropout)  # its first phase too
    assert {m.p for m in teacher.modules() if isinstance(m, nn.Dropout)} == {0.1}  # the teacher is not touched


def test_every_method_trains_on_batches_masked_at_the_jobs_mlm_probability(tmp_path):
    import torch

    from conftest import mlm_dataset, tiny_teacher, tiny_tokenizer
    from wid_hf.pipeline import build_trainer

    teacher, tokenizer = tiny_teacher(), tiny_tokenizer(tmp_path / "tokenizer")
    train = mlm_dataset(n=64, static_labels=False)  # masked by the job's collator, as a corpus is
    for method in ("wid", "etd-impt", "random"):
        shares = {}
        for p in (0.15, 0.45):
            job = Job.create(output_dir=str(tmp_path / f"{method}-{p}"), method=method, max_steps=20,
                             target_hidden_size=24, target_intermediate_size=40, mlm_probability=p)
            trainer = build_trainer(job, teacher, tokenizer, train, job.wid.resolve(teacher.config), None)
            torch.manual_seed(0)
            labels = trainer.data_collator([train[i] for i in range(len(train))])["labels"]
            shares[p] = (labels[:, 1:-1] != -100).float().mean().item()  # [CLS] and [SEP] are never masked
        assert abs(shares[0.15] - 0.15) < 0.05 and abs(shares[0.45] - 0.45) < 0.05, (method, shares)


def test_budget_modes_learning_rates_follow_the_run_length_and_the_masking_rate():
    from wid_hf.pipeline import BUDGET_LONG_RUN_STEPS, BUDGET_MLM_PROBABILITY, budget_learning_rates

    def rates(**settings):
        t = Job.create(output_dir="x", **settings).training
        return t.learning_rate, t.compactor_learning_rate

    # budget mode masks 30% of every method's training tokens; there the searches chose 1e-3 at every length
    assert Job.create(output_dir="x", method="etd-impt").data.mlm_probability == BUDGET_MLM_PROBABILITY == 0.3
    for steps in (120, BUDGET_LONG_RUN_STEPS - 1, BUDGET_LONG_RUN_STEPS, 3000):
        assert rates(max_steps=steps) == (1e-3, 1e-4) == budget_learning_rates(steps), steps
    assert rates(max_steps=1500, mlm_probability=0.4) == (1e-3, 1e-4)
    # at BERT's 15% (budget mode's rate until 2026-12-07) half the rate from BUDGET_LONG_RUN_STEPS, as searched there
    assert rates(max_steps=BUDGET_LONG_RUN_STEPS - 1, mlm_probability=0.15) == (1e-3, 1e-4)
    assert rates(max_steps=BUDGET_LONG_RUN_STEPS, mlm_probability=0.15) == (5e-4, 5e-5)
    assert budget_learning_rates(1500, mlm_probability=0.15) == (5e-4, 5e-5)
    # what is given wins, and only budget mode's WID changes with the length
    assert rates(max_steps=1500, mlm_probability=0.15, learning_rate=1e-3) == (1e-3, 5e-5)
    assert rates(max_steps=1500, budget_mode=False) == (JOB_PRESETS["demo"]["learning_rate"],
                                                        JOB_PRESETS["demo"]["compactor_learning_rate"])
    assert rates(max_steps=1500, method="etd-impt")[0] == STUDENT_LEARNING_RATE


def test_a_directory_of_an_earlier_default_rate_names_the_flags_that_resume_it(tmp_path):
    earlier = Job.create(output_dir=str(tmp_path), max_steps=1500, learning_rate=1e-3, compactor_learning_rate=1e-4,
                         mlm_probability=0.15)
    (tmp_path / "checkpoints" / "checkpoint-50").mkdir(parents=True)
    (tmp_path / "job.json").write_text(json.dumps({"identity": earlier.identity(), "wid_hf": "0.1.0"}))
    with pytest.raises(JobMismatchError, match=re.escape(
            "learning_rate: 0.001 then, 0.0005 now, compactor_learning_rate: 0.0001 then, 5e-05 now; to resume, give "
            "--learning_rate 0.001 --compactor_learning_rate 0.0001)")):
        _check_output_dir(Job.create(output_dir=str(tmp_path), max_steps=1500, mlm_probability=0.15))
    given = parse_dataclass_command("compress", ["--output_dir", str(tmp_path), "--max_steps", "1500",
                                                 "--learning_rate", "0.001", "--compactor_learning_rate", "0.0001",
                                                 "--mlm_probability", "0.15"])
    assert Job.create(**given).identity() == earlier.identity()
    _check_output_dir(Job.create(**given))


@pytest.mark.parametrize("steps, rates", [(300, ("0.001", "0.0001")), (1500, ("0.0005", "5e-05"))])
def test_a_budget_directory_that_masked_15_percent_names_the_flags_that_resume_it(tmp_path, steps, rates):
    # as budget mode wrote it until 2026-12-07: no mlm_probability in the identity (15%), its rates by the length
    identity = Job.create(output_dir=str(tmp_path), max_steps=steps, mlm_probability=0.15).identity()
    assert "mlm_probability" not in identity
    (tmp_path / "checkpoints" / "checkpoint-50").mkdir(parents=True)
    (tmp_path / "job.json").write_text(json.dumps({"identity": identity, "wid_hf": "0.1.0"}))
    changed = "mlm_probability" if steps < 1000 else "compactor_learning_rate, learning_rate, mlm_probability"
    rate_change = "" if steps < 1000 else (f", learning_rate: {rates[0]} then, 0.001 now, compactor_learning_rate: "
                                           f"{rates[1]} then, 0.0001 now")
    with pytest.raises(JobMismatchError, match=re.escape(
            f"(changed: {changed}; mlm_probability: 0.15 then, 0.3 now (budget mode's default since 2026-12-07, 0.15 "
            f"before){rate_change}; to resume, give --mlm_probability 0.15 --learning_rate {rates[0]} "
            f"--compactor_learning_rate {rates[1]})")):
        _check_output_dir(Job.create(output_dir=str(tmp_path), max_steps=steps))
    flags = ["--mlm_probability", "0.15", "--learning_rate", rates[0], "--compactor_learning_rate", rates[1]]
    given = parse_dataclass_command("compress", ["--output_dir", str(tmp_path), "--max_steps", str(steps), *flags])
    assert Job.create(**given).identity() == identity
    _check_output_dir(Job.create(**given))


def test_a_directory_of_budget_modes_earlier_hard_mask_step_names_the_flag_that_resumes_it(tmp_path):
    # hard masks at 55% of the run were budget mode's default at every length until 2026-12-02, 40% from 1,000 steps
    for steps, interval in ((1000, 61), (1500, 91)):
        earlier = Job.create(output_dir=str(tmp_path), max_steps=steps, hard_mask_at=0.55)
        assert earlier.wid.mask_interval == interval != Job.create(output_dir="x", max_steps=steps).wid.mask_interval
        (tmp_path / "checkpoints" / "checkpoint-50").mkdir(parents=True, exist_ok=True)
        (tmp_path / "job.json").write_text(json.dumps({"identity": earlier.identity(), "wid_hf": "0.1.0"}))
        with pytest.raises(JobMismatchError, match=re.escape(
                "(changed: wid; the earlier job hardened masks at 55% of the run (budget mode's default until "
                "2026-12-02; 40% from 1,000 steps since); to resume, give --hard_mask_at 0.55)")):
            _check_output_dir(Job.create(output_dir=str(tmp_path), max_steps=steps))
        given = parse_dataclass_command("compress", ["--output_dir", str(tmp_path), "--max_steps", str(steps),
                                                     "--hard_mask_at", "0.55"])
        assert Job.create(**given).identity() == earlier.identity()
        _check_output_dir(Job.create(**given))
    # another changed schedule keeps the general message
    other = Job.create(output_dir=str(tmp_path), max_steps=1500, hard_mask_at=0.75)
    (tmp_path / "job.json").write_text(json.dumps({"identity": other.identity(), "wid_hf": "0.1.0"}))
    with pytest.raises(JobMismatchError, match=re.escape("WIDConfig mask_interval: 125 then, 66 now")):
        _check_output_dir(Job.create(output_dir=str(tmp_path), max_steps=1500))


def test_etd_importance_sample_has_the_batches_asked_for():
    from datasets import Dataset
    from transformers import default_data_collator

    from wid_hf.pipeline import _importance_batches

    train = Dataset.from_dict({"input_ids": [[i, i + 1] for i in range(100)]})
    for n in (1, 16, 64):
        batches = _importance_batches(train, default_data_collator, 4, 0, n)
        assert len(batches) == min(n, 25) and all(b["input_ids"].shape == (4, 2) for b in batches)
    again = _importance_batches(train, default_data_collator, 4, 0, 16)
    # seeded: the same sample each time, a larger one starting with the same batches
    assert all((a["input_ids"] == b["input_ids"]).all() for a, b in zip(again, batches))


@pytest.mark.parametrize("earlier, message, flags", [
    # a WIDConfig field the earlier job set, and its value then and now
    (dict(taylor_window=20), "taylor_window: 20 then, 10 now", ["--taylor_window", "20"]),
    # budget mode's step scores were the group form until 2026-11-28: a directory of such a run records no
    # taylor_per_compactor (it was at WIDConfig's default, False) and must not resume as today's budget mode
    (dict(taylor_per_compactor=False), "taylor_per_compactor: False then, True now",
     ["--taylor_per_compactor", "False"]),
    # explicit sizes then, the default ratio now: a field unset on one side is called so, and has no flag
    (dict(target_hidden_size=96, target_intermediate_size=384), "target_hidden_size: 96 then, unset now, "
     "target_intermediate_size: 384 then, unset now, target_ratio: unset then, 0.5 now",
     ["--target_hidden_size", "96", "--target_intermediate_size", "384"]),
])
def test_a_changed_wid_setting_names_the_flags_that_resume_the_earlier_job(tmp_path, earlier, message, flags):
    earlier = Job.create(output_dir=str(tmp_path), max_steps=300, **earlier)
    (tmp_path / "checkpoints" / "checkpoint-18").mkdir(parents=True)
    (tmp_path / "job.json").write_text(json.dumps({"identity": earlier.identity(), "wid_hf": "0.1.0"}))
    with pytest.raises(JobMismatchError, match=re.escape(f"changed: wid; WIDConfig {message}; to resume, give the "
                                                         f"earlier values: {' '.join(flags)}")):
        _check_output_dir(Job.create(output_dir=str(tmp_path), max_steps=300))
    # the flags it prints parse back to the earlier job, and with them the directory resumes
    given = parse_dataclass_command("compress", ["--output_dir", str(tmp_path), "--max_steps", "300", *flags])
    assert Job.create(**given).identity() == earlier.identity()
    _check_output_dir(Job.create(**given))


def test_a_budget_directory_from_before_train_dropout_says_it_cannot_resume(tmp_path):
    earlier = Job.create(output_dir=str(tmp_path), max_steps=300)
    identity = earlier.identity()
    del identity["wid"]["train_dropout"]  # as written before 2026-12-02: the teacher's dropout trained
    (tmp_path / "checkpoints" / "checkpoint-18").mkdir(parents=True)
    (tmp_path / "job.json").write_text(json.dumps({"identity": identity, "wid_hf": "0.1.0"}))
    with pytest.raises(JobMismatchError, match=re.escape(
            "train_dropout: unset then, 0.0 now; no flag unsets train_dropout again, so this job cannot resume "
            "under this wid_hf: start it over (--overwrite) or give a new --output_dir")):
        _check_output_dir(Job.create(output_dir=str(tmp_path), max_steps=300))


def test_an_etd_impt_directory_of_the_earlier_default_names_the_flag_that_resumes_it(tmp_path):
    earlier = Job.create(output_dir=str(tmp_path), method="etd-impt")
    identity = {k: v for k, v in earlier.identity().items() if k != "importance_batches"}  # as written before 64
    (tmp_path / "checkpoints" / "checkpoint-18").mkdir(parents=True)
    (tmp_path / "job.json").write_text(json.dumps({"identity": identity, "wid_hf": "0.1.0"}))
    with pytest.raises(JobMismatchError, match=re.escape("(changed: importance_batches; importance_batches: 16 then, "
                                                         "64 now; to resume, give --importance_batches 16)")):
        _check_output_dir(Job.create(output_dir=str(tmp_path), method="etd-impt"))
    given = parse_dataclass_command("baseline", ["--output_dir", str(tmp_path), "--method", "etd-impt",
                                                 "--importance_batches", "16"])
    assert Job.create(**given).identity() == identity
    _check_output_dir(Job.create(**given))


def test_heldout_top1_statistics_catch_a_model_that_ignores_its_input():
    import torch
    from conftest import tiny_teacher
    from datasets import Dataset

    from wid_hf.evaluation import context_blindness, evaluate_mlm

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 99, (8, 16), generator=g)
    labels = torch.where(torch.rand(8, 16, generator=g) < 0.3, ids, torch.full_like(ids, -100))
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()})
    listening, blind = tiny_teacher(), tiny_teacher()
    with torch.no_grad():
        blind.cls.predictions.bias[7] = 1e4  # one token wins whatever the input
        top1 = listening(input_ids=ids).logits[labels != -100].argmax(-1)
    heard = evaluate_mlm(listening, data, progressbar=False)
    counts = torch.bincount(top1)
    assert heard["top1_distinct"] == len(top1.unique()) > 1
    assert heard["top1_share"] == pytest.approx(counts.max().item() / len(top1))
    assert heard["top1_most_common"] == counts.argmax().item()
    deaf = evaluate_mlm(blind, data, progressbar=False)
    assert (deaf["top1_distinct"], deaf["top1_share"], deaf["top1_most_common"]) == (1, 1.0, 7)
    # what the report and the console say about each (half the positions on one token or more: context-blind)
    assert heard["top1_share"] < 0.5 and context_blindness(heard) is None
    assert context_blindness(deaf) == "predicts `token id 7` at every held-out masked position: it ignores its input"
    mostly = dict(top1_distinct=3, top1_share=0.6, top1_most_common=7, top1_most_common_token="the")
    assert "predicts `the` at 60% of the held-out masked positions (3 different tokens" in context_blindness(mostly)
    assert context_blindness({**mostly, "top1_share": 0.45}) is None


def test_fill_mask_examples_catch_a_student_that_ignores_its_input(tmp_path):
    import torch
    from conftest import tiny_teacher, tiny_tokenizer

    from wid_hf.evaluation import fill_mask_examples

    tokenizer = tiny_tokenizer(tmp_path / "tok")
    sentences = ["w1 w2 [MASK] w3", "w9 [MASK] w8 w7 w6", "[MASK] w40 w41", "w5 w5 w5 [MASK] w60 w61"]
    listening = tiny_teacher()
    blind = tiny_teacher()
    with torch.no_grad():
        blind.cls.predictions.bias[7] = 1e4  # one token wins whatever the input
    found = fill_mask_examples({"teacher": listening, "student": blind}, tokenizer, sentences=sentences)
    assert found["uses_context"] == {"teacher": True, "student": False}
    assert len(found["examples"]) == 4 and len(found["examples"][0]["student"]) == 3
