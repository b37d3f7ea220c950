"""Nothing a user has is lost and no input ends in a traceback: what `--overwrite`, resume and a second job may
touch in an output directory, one-line errors for bad input, and Taylor scores that survive a non-finite step.

Real files and real processes: the CLI in-process (`wid_hf.cli.main`) or as a subprocess, a real plain Trainer's
`save_only_model` checkpoint and a real PEFT checkpoint next to a WID run, a real second process holding the lock,
and a real full device (`/dev/full`) under a checkpoint write.
"""

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import ROOT, mlm_dataset, random_batch, tiny_teacher
from test_cli import compress_args, make_workspace, run_cli
from test_cli import _one_line_error as one_line_error
from transformers import Trainer, TrainingArguments, default_data_collator

from wid_hf import WIDConfig, WIDTrainer, cli, WIDTrainingArguments, get_wid_model
from wid_hf.job_directory import LOCK_FILE, JobLock
from wid_hf.pruner import accumulate_taylor, skipped_score_steps, update_masks
from wid_hf.resume import CHECKPOINT_MARKER, checkpoint_step, last_complete_checkpoint, write_json_atomically


@pytest.fixture
def ws(tmp_path):
    return make_workspace(tmp_path)


def tree(path):
    """Every file under `path` with its bytes (what a user would lose)."""
    return {os.path.relpath(os.path.join(d, f), path): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(path) for f in files}


# ---------------------------------------------------------------------------------------------- --overwrite
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_that_is_not_a_job_directory_is_refused_with_or_without_overwrite(ws, capsys, overwrite):
    home = ws["dir"] / "home"
    (home / "photos").mkdir(parents=True)
    (home / "notes.txt").write_text("mine")
    (home / "photos" / "a.jpg").write_bytes(b"\xff\xd8")
    before = tree(home)
    code, _, err = run_cli(compress_args(ws, out="home", **({"--overwrite": "true"} if overwrite else {})), capsys)
    one_line_error(code, err, f"--output-dir {home}", "not a wid-hf job directory", "'notes.txt'")
    assert tree(home) == before


def test_overwrite_deletes_only_what_a_job_wrote_and_only_after_validation(ws, capsys):
    out = ws["dir"] / "out"
    assert run_cli(compress_args(ws), capsys)[0] == 0
    (out / "notes.txt").write_text("my notes on this run")
    (out / "analysis").mkdir()
    (out / "analysis" / "plot.py").write_text("print(1)")
    students = tree(out / "student")

    # a bad input with --overwrite: refused before anything is deleted
    code, _, err = run_cli(compress_args(ws, **{"--overwrite": "true", "--seq-len": "4096"}), capsys)
    one_line_error(code, err, "--seq-len 4096", "max_position_embeddings")
    assert tree(out / "student") == students and (out / "report.json").is_file()

    code, stdout, err = run_cli(compress_args(ws, **{"--overwrite": "true", "--steps": "10"}), capsys)
    assert code == 0, err
    assert "--overwrite: deleted" in stdout and "notes.txt" not in stdout
    assert (out / "notes.txt").read_text() == "my notes on this run"
    assert (out / "analysis" / "plot.py").read_text() == "print(1)"
    assert json.loads((out / "report.json").read_text())["training"]["steps"] == 10
    assert json.loads((out / "job.json").read_text())["identity"]["max_steps"] == 10


def test_an_unreadable_job_json_is_one_line_and_left_as_it_is(ws, capsys):
    out = ws["dir"] / "out"
    out.mkdir()
    (out / "job.json").write_bytes(b'{"identity": {"max_st')
    for extra in ({}, {"--overwrite": "true"}):
        code, _, err = run_cli(compress_args(ws, **extra), capsys)
        one_line_error(code, err, "job.json is unreadable", "--output-dir")
        assert (out / "job.json").read_bytes() == b'{"identity": {"max_st'


def test_job_json_is_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "job.json"
    write_json_atomically(str(path), {"identity": {"a": 1}})

    def torn(obj, f, **kw):  # a write that dies half way (a kill, a full disk)
        f.write('{"identity": {"a"')
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json, "dump", torn)
    with pytest.raises(OSError):
        write_json_atomically(str(path), {"identity": {"a": 2}})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"identity": {"a": 1}} and os.listdir(tmp_path) == ["job.json"]


# ---------------------------------------------------------------------------------------------- one job per directory
def test_a_second_job_on_a_locked_directory_is_refused_and_a_stale_lock_is_taken_over(ws, capsys):
    out = ws["dir"] / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from wid_hf.job_directory import JobLock
            with JobLock({str(out)!r}):
                print("locked", flush=True)
                sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": ROOT})
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, err = run_cli(compress_args(ws), capsys)
        one_line_error(code, err, "in use by another wid-hf job", f"pid {holder.pid}")
        assert os.listdir(out) == [LOCK_FILE]  # the refused job wrote nothing
    finally:
        holder.kill()  # SIGKILL: the lock file stays behind, the kernel's lock goes with the process
        holder.wait()
    assert (out / LOCK_FILE).is_file()
    with JobLock(str(out)):
        pass


def test_compress_under_torchrun_is_refused(ws, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, _, err = run_cli(compress_args(ws), capsys)
    one_line_error(code, err, "torchrun", "WORLD_SIZE=2", "WIDTrainer")
    assert not (ws["dir"] / "out").exists()


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_inputs_are_one_line_with_the_users_flag(ws, capsys):
    bad = ws["dir"] / "latin1.txt"
    bad.write_bytes("caf\xe9 au lait\n".encode("latin-1") * 50)
    code, _, err = run_cli(compress_args(ws, out="o1", **{"--corpus": str(bad)}), capsys)
    one_line_error(code, err, f"--corpus {bad}", "not UTF-8")

    broken = ws["dir"] / "broken.jsonl"
    broken.write_text('{"text": "one"}\n{"text": \n')
    code, _, err = run_cli(compress_args(ws, out="o1", **{"--corpus": str(broken)}), capsys)
    one_line_error(code, err, f"--corpus {broken}", "not valid JSON")

    records = ws["dir"] / "records.jsonl"
    records.write_text("".join(json.dumps({"text": "w1 w2 w3 " * 20, "title": "t"}) + "\n" for _ in range(40)))
    code, _, err = run_cli(compress_args(ws, out="o1", **{"--corpus": str(records), "--text-column": "body"}),
                           capsys)
    one_line_error(code, err, "no column 'body'", "text, title", "--text-column")

    code, _, err = run_cli(compress_args(ws, out="o1", **{"--seq-len": "100"}), capsys)  # the teacher has 64
    one_line_error(code, err, "--seq-len 100", "64 positions", "--seq-len 64 or less")

    code, _, err = run_cli(compress_args(ws, out="o1", **{"--gradient-accumulation-steps": "0"}), capsys)
    one_line_error(code, err, "--gradient-accumulation-steps must be at least 1")

    code, _, err = run_cli(["push", "--student", str(ws["dir"]), "--repo", "me/x", "--report",
                            str(ws["dir"] / "no-report.json")], capsys)
    one_line_error(code, err, "--report", "no-report.json", "is not a file")

    token = "hf_AbCdEfGhIjKlMnOpQrStUv"  # typed where no flag takes it: argparse's usage error must not echo it
    for argv in (compress_args(ws, out="o1") + [token], ["push", "--student", "s", "--repo", "me/x", "--tokne", token],
                 ["merge", "--checkpoint", "c", "--output", "o", token]):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and token not in err and "hf_***" in err, err
    assert os.listdir(ws["dir"] / "o1") == [LOCK_FILE]  # the refused jobs wrote nothing there


def test_a_task_file_with_a_header_row_is_one_line(ws, capsys):
    task = ws["dir"] / "task.csv"
    task.write_text("label,text\n" + "".join(f"{i % 2},w{i} w{i + 1} w{i + 2}\n" for i in range(40)))
    code, _, err = run_cli(["evaluate", "--model", ws["teacher"], "--eval-corpus", ws["eval"], "--sequences", "2",
                            "--seq-len", "32", "--task", "csv", "--task-file", str(task)], capsys)
    one_line_error(code, err, f"--task-file {task}", "header row (label,text)")


def test_a_full_disk_during_a_checkpoint_leaves_the_previous_one_and_says_so(ws, capsys, monkeypatch):
    from wid_hf.trainer import WIDCallback

    checkpoints = ws["dir"] / "out" / "checkpoints"

    def fill_the_disk(self, args, state, control, **kwargs):  # once checkpoint-4 is complete
        if state.global_step == 4:  # checkpoint-8's optimizer state goes to a device that is always full (ENOSPC)
            (checkpoints / "checkpoint-8").mkdir()
            (checkpoints / "checkpoint-8" / "optimizer.pt").symlink_to("/dev/full")

    monkeypatch.setattr(WIDCallback, "on_save", fill_the_disk, raising=False)
    code, _, err = run_cli(compress_args(ws), capsys)
    one_line_error(code, err, "Could not write the checkpoint", "checkpoint-8", "checkpoint-4 is intact",
                   "run the same command again")
    assert checkpoint_step(str(checkpoints / "checkpoint-4")) == 4
    assert not (checkpoints / "checkpoint-8").exists()  # the partial write is removed
    monkeypatch.undo()
    code, stdout, err = run_cli(compress_args(ws), capsys)
    assert code == 0 and "resuming from" in stdout and "checkpoint-4" in stdout, err


# ---------------------------------------------------------------------------------------------- resume
def test_resume_never_deletes_a_checkpoint_it_did_not_write(tmp_path, caplog):
    from peft import LoraConfig, get_peft_model

    out = tmp_path / "out"
    common = dict(output_dir=str(out), per_device_train_batch_size=8, learning_rate=1e-3, report_to=[], use_cpu=True,
                  disable_tqdm=True, save_strategy="steps", seed=0)
    fast = WIDConfig(target_hidden_size=24, target_intermediate_size=40, mask_interval=1, pruning_intervals=2)
    WIDTrainer(model=tiny_teacher(), wid_config=fast, args=WIDTrainingArguments(max_steps=4, save_steps=2, **common),
               train_dataset=mlm_dataset(), data_collator=default_data_collator).train()
    # the user's own runs in the same folder: a save_only_model checkpoint, a PEFT (LoRA) checkpoint
    Trainer(model=tiny_teacher(), args=TrainingArguments(max_steps=7, save_steps=7, save_only_model=True, **common),
            train_dataset=mlm_dataset(), data_collator=default_data_collator).train()
    lora = get_peft_model(tiny_teacher(), LoraConfig(r=2, target_modules=["query", "value"]))
    Trainer(model=lora, args=TrainingArguments(max_steps=9, save_steps=9, **common), train_dataset=mlm_dataset(),
            data_collator=default_data_collator).train()
    assert (out / "checkpoint-9" / "adapter_model.safetensors").is_file()
    # and a WID checkpoint a kill cut short (its marker only)
    (out / "checkpoint-5").mkdir()
    (out / "checkpoint-5" / CHECKPOINT_MARKER).write_text('{"writer": "wid_hf", "world_size": 1}')
    users = {name: tree(out / name) for name in ("checkpoint-7", "checkpoint-9")}

    resumed = WIDTrainer(model=tiny_teacher(), wid_config=fast,
                         args=WIDTrainingArguments(max_steps=6, save_steps=2, save_total_limit=1, **common),
                         train_dataset=mlm_dataset(), data_collator=default_data_collator)
    with caplog.at_level(logging.WARNING, logger="wid_hf.resume"):
        resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 6
    for name in ("checkpoint-7", "checkpoint-9"):
        assert f"skipping {out / name}: not a complete checkpoint written by wid_hf" in caplog.text
        assert tree(out / name) == users[name]
    # the cut-short one is gone, and rotation (save_total_limit=1) removed only wid_hf's older checkpoints
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-6", "checkpoint-7", "checkpoint-9"]
    assert last_complete_checkpoint(str(out), say=lambda _: None) == str(out / "checkpoint-6")


def test_a_ddp_checkpoint_is_complete_only_with_every_ranks_rng_state(tmp_path):
    folder = tmp_path / "checkpoint-10"
    folder.mkdir()
    (folder / CHECKPOINT_MARKER).write_text('{"writer": "wid_hf", "world_size": 2}')
    (folder / "trainer_state.json").write_text('{"global_step": 10}')
    for name in ("wid_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state_0.pth"):
        (folder / name).write_bytes(b"x")
    assert checkpoint_step(str(folder)) is None  # rank 1 had not written its RNG state yet
    (folder / "rng_state_1.pth").write_bytes(b"x")
    assert checkpoint_step(str(folder)) == 10


# ---------------------------------------------------------------------------------------------- non-finite steps
def _score_run(poison_step=None, skip_step=None, steps=6):
    """Taylor scores over `steps` backward passes; `poison_step` has a NaN in one gradient, `skip_step` is left out."""
    model = get_wid_model(tiny_teacher(), WIDConfig(target_ratio=0.5, mask_interval=2, pruning_intervals=2,
                                                    mask_scoring="taylor"))
    model.train()
    for step in range(1, steps + 1):
        model.zero_grad()
        model(**random_batch(seed=step), labels=random_batch(seed=step)["input_ids"]).loss.backward()
        if step == poison_step:
            next(p for p in model.compactor_parameters() if p.grad is not None).grad[0, 0] = float("nan")
        if step != skip_step:
            accumulate_taylor(model)
    scores = {name: model.masks.score(name).clone() for name in model.groups}
    update_masks(model, 4)
    return model, scores, {name: model.masks.get(name).clone() for name in model.groups}


def test_a_non_finite_step_is_left_out_of_the_scores_and_counted(tmp_path, caplog):
    poisoned, scores, masks = _score_run(poison_step=3)
    clean, clean_scores, clean_masks = _score_run(skip_step=3)
    assert all(torch.isfinite(s).all() for s in scores.values())
    assert all(torch.equal(scores[k], clean_scores[k]) for k in scores)
    assert all(torch.equal(masks[k], clean_masks[k]) for k in masks)
    assert skipped_score_steps(poisoned) == 1 and skipped_score_steps(clean) == 0

    trainer = WIDTrainer(model=poisoned, args=WIDTrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True))
    logs = {"loss": 1.0}
    with caplog.at_level(logging.WARNING, logger="wid_hf.trainer"):
        trainer.log(logs)
    assert logs["wid/skipped_score_steps"] == 1.0
    assert "1 training step(s) since the last log had a non-finite loss or gradient" in caplog.text
