"""WIDTrainer on tiny random BERTs with a fast schedule (mask_interval=2)."""

import os
import subprocess
import sys
import warnings

import pytest
import torch
from conftest import ROOT, mlm_dataset, random_batch, tiny_teacher, tiny_tokenizer
from transformers import DataCollatorForLanguageModeling, HfArgumentParser, TrainerCallback, default_data_collator

from wid_hf import WIDConfig, WIDModel, WIDTrainer, WIDTrainingArguments
from wid_hf.trainer import wid_metrics

FAST = dict(target_hidden_size=24, target_intermediate_size=40, mask_interval=2, pruning_intervals=4)  # hard at 10


def make_args(tmp_path, **kw):
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        max_steps=16,
        learning_rate=1e-3,
        compactor_learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=0,
        data_seed=0,
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    defaults.update(kw)
    return WIDTrainingArguments(**defaults)


def make_trainer(tmp_path, teacher=None, dataset=None, collator=None, eval_dataset=None, **kw):
    return WIDTrainer(
        model=teacher if teacher is not None else tiny_teacher(),
        wid_config=WIDConfig(**FAST),
        args=make_args(tmp_path, **kw),
        train_dataset=dataset if dataset is not None else mlm_dataset(),
        eval_dataset=eval_dataset,
        data_collator=collator or default_data_collator,
    )


def final_state(trainer):
    return {k: v.detach().clone() for k, v in trainer.wid_model.state_dict().items()}


def test_short_run_reaches_targets_decays_pruned_entries_and_merges_exactly(tmp_path):
    tokenizer = tiny_tokenizer(tmp_path / "tok")
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    trainer = make_trainer(tmp_path, dataset=mlm_dataset(static_labels=False), collator=collator,
                           eval_dataset=mlm_dataset(n=16, seed=5, static_labels=False),
                           eval_strategy="steps", eval_steps=8)
    trainer.processing_class = tokenizer
    trainer.train()
    wid = trainer.wid_model
    assert wid.hard_masks_active
    assert wid.kept_sizes() == {"hidden": 24, "attention_0": 24, "ffn_0": 40, "attention_1": 24, "ffn_1": 40, "head": 24}

    logs = [h for h in trainer.state.log_history if "wid/kept_hidden" in h]
    by_step = {h["step"]: h for h in logs}
    assert by_step[1]["wid/kept_hidden"] == 48 and by_step[2]["wid/kept_hidden"] < 48
    assert by_step[8]["wid/kept_ffn"] == 40
    # the penalty drives pruned entries toward zero while pruning, and hard masks make them exactly zero
    assert by_step[9]["wid/pruned_norm"] < by_step[8]["wid/pruned_norm"]
    assert by_step[16]["wid/pruned_norm"] == 0.0
    assert by_step[16]["wid/pruned_fraction"] > 0.3
    assert any("eval_loss" in h for h in trainer.state.log_history)

    batch = random_batch()
    student = trainer.save_student(str(tmp_path / "student"))
    assert os.path.isfile(tmp_path / "student" / "model.safetensors")
    assert os.path.isfile(tmp_path / "student" / "vocab.txt") or os.path.isfile(tmp_path / "student" / "tokenizer.json")
    wid.eval()
    with torch.no_grad():
        diff = (wid(**batch).logits - student.eval()(**batch).logits).abs().max()
    assert diff <= 1e-4
    assert wid_metrics(wid)["wid/student_params"] == sum(p.numel() for p in student.parameters())


def test_optimizer_groups_follow_the_reference(tmp_path):
    trainer = make_trainer(tmp_path, learning_rate=1e-6, compactor_learning_rate=5e-5)
    trainer.create_optimizer()
    groups = trainer.optimizer.param_groups
    compactors = {id(p) for p in trainer.wid_model.compactor_parameters()}
    assert {id(p) for p in groups[0]["params"]} == compactors and groups[0]["lr"] == 5e-5
    assert groups[1]["lr"] == 1e-6 and groups[1]["weight_decay"] == 0.01
    assert groups[2]["weight_decay"] == 0.0
    names = {id(p): n for n, p in trainer.wid_model.named_parameters()}
    assert all("bias" in names[id(p)] or "LayerNorm" in names[id(p)] for p in groups[2]["params"])
    assert trainer.optimizer.defaults["eps"] == 1e-6


def test_resume_mid_pruning_is_exact(tmp_path):
    full = make_trainer(tmp_path / "a", save_strategy="steps", save_steps=6)
    full.train()
    expected = final_state(full)
    assert os.path.isfile(tmp_path / "a" / "out" / "checkpoint-6" / "wid_model.safetensors")

    # an interrupted run: a fresh process would rebuild the trainer from scratch and resume from checkpoint-6
    resumed = make_trainer(tmp_path / "a", save_strategy="steps", save_steps=6)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "out" / "checkpoint-6"))
    got = final_state(resumed)
    for name, value in expected.items():
        assert torch.allclose(value.float(), got[name].float(), atol=1e-6, rtol=0), name
    for name in full.wid_model.groups:
        assert torch.equal(full.wid_model.masks.get(name), resumed.wid_model.masks.get(name))


def test_resume_from_a_foreign_or_corrupt_checkpoint_is_a_clear_error(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    trainer.train()
    ckpt = tmp_path / "out" / "checkpoint-2"
    (ckpt / "wid_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt"):
        make_trainer(tmp_path, max_steps=4).train(resume_from_checkpoint=str(ckpt))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a WIDTrainer checkpoint"):
        make_trainer(tmp_path, max_steps=4).train(resume_from_checkpoint=str(tmp_path / "empty"))


def test_gradient_accumulation_gives_the_same_schedule_and_weights(tmp_path):
    one = make_trainer(tmp_path / "ga1", per_device_train_batch_size=8, gradient_accumulation_steps=1)
    one.train()
    # the loss normalisation over the accumulated batch, on the plain path (folding once per step is compared
    # with this path in test_student_path.test_trainer_folds_once_per_step_with_the_same_result)
    two = make_trainer(tmp_path / "ga2", per_device_train_batch_size=4, gradient_accumulation_steps=2,
                       wid_fold_once_per_step=False)
    two.train()
    kept = lambda t: [(h["step"], h["wid/kept_hidden"], h["wid/kept_ffn"]) for h in t.state.log_history if "wid/kept_ffn" in h]
    assert kept(one) == kept(two)
    a, b = final_state(one), final_state(two)
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) < 1e-4


def test_warns_at_the_start_when_max_steps_cannot_finish_pruning(tmp_path):
    class StepsSeen(TrainerCallback):
        at_warning = None

        def on_step_begin(self, args, state, control, **kw):
            if StepsSeen.at_warning is None and any("ends before the pruning schedule" in str(w.message) for w in caught):
                StepsSeen.at_warning = state.global_step

    trainer = make_trainer(tmp_path, max_steps=3)
    trainer.add_callback(StepsSeen())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    assert StepsSeen.at_warning == 0


def test_bf16_autocast_on_cpu_runs(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=4, bf16=True)
    out = trainer.train()
    assert torch.isfinite(torch.tensor(out.training_loss))


def test_torch_compile_trains_the_same_run(tmp_path):
    """Trainer's ``torch_compile=True`` hands compute_loss the compiled wrapper: the masked-position head must still
    be found through it, and mask growth, hard masks and compaction (new parameter shapes) must recompile cleanly."""
    runs = {}
    for compiled in (False, True):
        trainer = make_trainer(tmp_path / str(compiled), max_steps=12, torch_compile=compiled)
        trainer.train()
        runs[compiled] = trainer
    assert type(runs[True].model_wrapped).__name__ == "OptimizedModule"
    losses = {c: [h["loss"] for h in t.state.log_history if "loss" in h] for c, t in runs.items()}
    assert len(losses[True]) == 12 and losses[True] == pytest.approx(losses[False], abs=1e-3)
    eager, compiled = runs[False].wid_model, runs[True].wid_model
    assert compiled.hard_masks_active and compiled.kept_sizes() == eager.kept_sizes()
    for name in eager.masks.group_names:
        assert torch.equal(eager.masks.get(name), compiled.masks.get(name))
    expected = eager.merge_and_unload().state_dict()
    for key, value in compiled.merge_and_unload().state_dict().items():
        assert torch.allclose(value, expected[key], atol=1e-3), key


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune", None])
def test_a_compile_mode_with_cuda_graphs_is_warned_about(tmp_path, mode):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(tmp_path, max_steps=1, torch_compile=True, torch_compile_mode=mode)
    about = [w for w in caught if "records CUDA graphs" in str(w.message)]
    assert len(about) == (mode is not None)


def test_accepts_a_wid_model_and_refuses_a_bare_teacher(tmp_path):
    model = WIDModel(tiny_teacher(), WIDConfig(**FAST))
    trainer = WIDTrainer(model=model, args=make_args(tmp_path, max_steps=2), train_dataset=mlm_dataset(),
                         data_collator=default_data_collator)
    assert trainer.wid_model is model
    with pytest.raises(ValueError, match="without a wid_config"):
        WIDTrainer(model=tiny_teacher(), args=make_args(tmp_path))


def test_save_student_to_argument(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=12, save_student_to=str(tmp_path / "student"))
    trainer.train()
    from transformers import BertForMaskedLM

    student = BertForMaskedLM.from_pretrained(tmp_path / "student")
    assert student.config.hidden_size == 24


def test_training_arguments_parse_from_the_command_line():
    parser = HfArgumentParser((WIDConfig, WIDTrainingArguments))
    wid, args = parser.parse_args_into_dataclasses(
        ["--output_dir", "x", "--target_ratio", "0.5", "--compactor_learning_rate", "1e-4", "--head_strategy", "head"]
    )
    assert wid.head_strategy == "head" and args.compactor_learning_rate == 1e-4 and args.learning_rate == 1e-6
    help_text = subprocess.run(
        [sys.executable, "-c", "from transformers import HfArgumentParser; from wid_hf import WIDConfig, "
         "WIDTrainingArguments; HfArgumentParser((WIDConfig, WIDTrainingArguments)).parse_args(['--help'])"],
        capture_output=True, text=True, cwd=ROOT,
    ).stdout
    assert "--compactor_learning_rate" in help_text and "--mask_interval" in help_text


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_identical_ranks(out):
    ranks = [torch.load(out / f"rank{r}.pt") for r in (0, 1)]
    assert ranks[0]["world_size"] == 2
    for key in ranks[0]["masks"]:
        assert torch.equal(ranks[0]["masks"][key], ranks[1]["masks"][key]), key
    for key in ranks[0]["student"]:
        assert torch.equal(ranks[0]["student"][key], ranks[1]["student"][key]), key
    assert ranks[0]["masks"]["hard"].item()
    assert not any(r["compacted"] for r in ranks)  # DDP buckets are fixed at wrapping time: whole compactors


@pytest.mark.slow
@pytest.mark.parametrize("accumulation, mode", [(1, "reference"), (2, "reference"), (1, "budget")])
def test_torchrun_two_processes_agree(tmp_path, accumulation, mode):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), os.path.join(ROOT, "tests", "ddp_worker.py"), str(tmp_path),
           str(accumulation), mode]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    _assert_identical_ranks(tmp_path)  # masks and, in budget mode, Taylor scores (started from the teacher's)
    assert os.path.isfile(tmp_path / "student" / "config.json")


@pytest.mark.slow
def test_accelerate_launch_two_processes_agree(tmp_path):
    # accelerate's multi-process launcher (torchrun underneath); the workers train on CPU with gloo.
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           os.path.join(ROOT, "tests", "ddp_worker.py"), str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    _assert_identical_ranks(tmp_path)


def test_plots_are_written(tmp_path):
    from wid_hf.config import TeacherDims
    from wid_hf.plotting import plot_schedule, plot_training

    history = [
        {"step": s, "loss": 5.0 - 0.1 * s, "wid/kept_hidden": 48 - 4 * min(s // 2, 6), "wid/kept_ffn": 96 - 7 * min(s // 2, 8),
         "wid/hard_masks": float(s >= 10)} for s in range(1, 17)
    ] + [{"step": 8, "eval_loss": 4.5}]
    dims = TeacherDims(48, 96, 4)
    config = WIDConfig(**FAST).resolve(dims)
    for path in (plot_training(history, tmp_path / "run.png", title="tiny"),
                 plot_training(history, tmp_path / "run2.png", config=config, dims=dims, teacher_loss=4.2),
                 plot_schedule(WIDConfig.from_preset("wid11"), TeacherDims(768, 3072, 12), tmp_path / "plan.png")):
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert os.path.getsize(path) > 10_000
    # widths from the schedule at every step, one line for kinds that prune alike (hidden = attention)
    from wid_hf.plotting import _width_series
    from wid_hf.schedule import kept_sizes

    logged = {k: [(1, 0)] for k in ("hidden", "attention", "ffn")}
    series = _width_series(logged, config, dims, 16)
    assert set(series) == {("hidden", "attention"), ("ffn",)}
    assert series[("ffn",)][10] == (10, kept_sizes(config, dims, 10)["ffn"]) and len(series[("ffn",)]) == 17
