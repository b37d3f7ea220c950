"""The whole `wid-hf compress` job survives a hard kill exactly.

Each run is the real CLI in its own process. The kills are real signals the process sends itself at a chosen
moment (a tiny wrapper installs the trigger, then calls `wid_hf.cli.main`): SIGTERM right after a checkpoint is
complete, and SIGKILL in the middle of a checkpoint write (after the weights and optimizer are on disk, before the
RNG and trainer state). The resumed job must end with the same student as an uninterrupted one, bit for bit up to
1e-6, with the same masks, and a rerun of a finished job must train nothing.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import ROOT, tiny_config, tiny_tokenizer
from safetensors.torch import load_file
from test_cli import write_corpus
from transformers import BertForMaskedLM, BertModel

pytestmark = pytest.mark.slow

# Schedule: masks every 2 steps, 2 intervals -> targets at step 4, hard masks from step 6; 14 steps in all.
JOB = ["--ratio", "0.5", "--steps", "14", "--batch-size", "4", "--seq-len", "32", "--mask-interval", "2",
       "--pruning-intervals", "2", "--eval-sequences", "8", "--save-steps", "4", "--learning-rate", "1e-3",
       "--compactor-learning-rate", "1e-2", "--seed", "3", "--no-progress"]

# `KILL` = "<signal> <where> <step>": where is "saved" (after checkpoint-<step> is complete) or "writing" (inside
# the write of checkpoint-<step>, after its weights, before its RNG/trainer state).
WRAPPER = textwrap.dedent("""
    import os, signal, sys
    import transformers
    from wid_hf import cli, trainer as wid_trainer

    kill = os.environ.get("KILL")
    if kill:
        sig, where, step = kill.split()
        sig, step = getattr(signal, sig), int(step)
        if where == "saved":
            original = wid_trainer.WIDCallback.on_save
            def on_save(self, args, state, control, **kw):
                out = original(self, args, state, control, **kw)
                if state.global_step == step:
                    os.kill(os.getpid(), sig)
                return out
            wid_trainer.WIDCallback.on_save = on_save
        else:
            original = transformers.Trainer._save_rng_state
            def _save_rng_state(self, output_dir):
                if self.state.global_step == step:
                    os.kill(os.getpid(), sig)
                return original(self, output_dir)
            transformers.Trainer._save_rng_state = _save_rng_state
    sys.exit(cli.main(sys.argv[1:]))
""")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    tokenizer = tiny_tokenizer(root / "teacher")
    torch.manual_seed(0)
    # dropout on, so the resumed run must also restore the RNG that dropout draws from
    BertForMaskedLM(tiny_config(dropout=0.1)).save_pretrained(
        root / "teacher")
    tokenizer.save_pretrained(root / "teacher")
    (root / "wrapper.py").write_text(WRAPPER)
    BertModel(tiny_config(dropout=0.1)).save_pretrained(root / "encoder")  # no MLM head: the job warms one up
    tokenizer.save_pretrained(root / "encoder")
    ws = {"root": root, "teacher": str(root / "teacher"), "encoder": str(root / "encoder"),
          "train": write_corpus(root / "train.txt"),
          "eval": write_corpus(root / "eval.txt", n_docs=30, seed=1)}
    reference = run_job(ws, "reference")
    assert reference.returncode == 0, reference.stderr
    return ws


def run_job(ws, out, kill=None, extra=(), teacher="teacher"):
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    env.pop("KILL", None)
    if kill:
        env["KILL"] = kill
    argv = ["compress", "--teacher", ws[teacher], "--corpus", ws["train"], "--eval-corpus", ws["eval"],
            "--output-dir", str(ws["root"] / out), *JOB, *extra]
    return subprocess.run([sys.executable, str(ws["root"] / "wrapper.py"), *argv], capture_output=True, text=True,
                          env=env, cwd=str(ws["root"]), timeout=600)


def assert_same_student(ws, out, reference="reference"):
    a = load_file(ws["root"] / reference / "student" / "model.safetensors")
    b = load_file(ws["root"] / out / "student" / "model.safetensors")
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= 1e-6, f"resumed student differs from the uninterrupted one by {worst:.3g}"
    ra = json.loads((ws["root"] / reference / "report.json").read_text())
    rb = json.loads((ws["root"] / out / "report.json").read_text())
    assert ra["training"]["steps"] == rb["training"]["steps"] == 14


def final_masks(ws, out):
    """The kept indices of every mask group in the job's last checkpoint."""
    checkpoints = ws["root"] / out / "checkpoints"
    last = max(checkpoints.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    masks = {k: v for k, v in load_file(last / "wid_model.safetensors").items() if k.startswith("masks.")}
    assert masks["masks.hard"].all()  # the run ended with hard masks, so these are the student's masks
    return masks


@pytest.mark.parametrize("kill, resumes_from", [
    ("SIGTERM saved 4", "checkpoint-4"),      # during pruning, at a checkpoint boundary
    ("SIGKILL writing 8", "checkpoint-4"),    # hard masks, inside the write of checkpoint-8: that one is ignored
    ("SIGTERM saved 8", "checkpoint-8"),      # after hard masks
])
def test_killed_job_resumes_to_the_same_student(setup, kill, resumes_from):
    out = "killed-" + kill.replace(" ", "-")
    first = run_job(setup, out, kill=kill)
    assert first.returncode == -getattr(signal, kill.split()[0]), first.stderr
    assert not (setup["root"] / out / "report.json").exists()

    second = run_job(setup, out)
    assert second.returncode == 0, second.stderr
    assert "resuming from" in second.stdout and resumes_from in second.stdout, second.stdout
    if "writing" in kill:
        assert "incomplete" in second.stdout, second.stdout
    assert_same_student(setup, out)
    ref, got = final_masks(setup, "reference"), final_masks(setup, out)
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)


def test_rerunning_a_finished_job_trains_nothing(setup):
    job = setup["root"] / "reference"
    before = sorted(os.listdir(job / "checkpoints"))
    student = (job / "student" / "model.safetensors").stat().st_mtime_ns
    again = run_job(setup, "reference")
    assert again.returncode == 0, again.stderr
    assert "already finished" in again.stdout and str(job / "student") in again.stdout
    assert sorted(os.listdir(job / "checkpoints")) == before
    assert (job / "student" / "model.safetensors").stat().st_mtime_ns == student

    # a changed setting is still a different job, not a finished one
    changed = run_job(setup, "reference", extra=("--steps", "16"))
    assert changed.returncode == 2 and "different job" in changed.stderr


def test_killed_during_merge_finishes_without_training(setup):
    out = "killed-merge"
    env_kill = "SIGKILL saved 14"  # the final checkpoint is complete; the student and report are not written yet
    first = run_job(setup, out, kill=env_kill)
    assert first.returncode == -signal.SIGKILL
    second = run_job(setup, out)
    assert second.returncode == 0, second.stderr
    assert "training already complete" in second.stdout, second.stdout
    assert sorted(os.listdir(setup["root"] / out / "checkpoints")) == sorted(
        os.listdir(setup["root"] / "reference" / "checkpoints"))
    assert_same_student(setup, out)


def test_schedule_that_cannot_finish_is_an_error(setup):
    bad = run_job(setup, "too-short", extra=("--steps", "5"))
    lines = [line for line in bad.stderr.splitlines() if line.startswith("wid-hf")]
    assert bad.returncode == 2 and len(lines) == 1 and "Traceback" not in bad.stderr, bad.stderr
    assert "--steps" in lines[0] and "--mask-interval" in lines[0]


def test_killed_during_teacher_warmup(setup):
    warmup = ("--head-warmup-steps", "4")
    reference = run_job(setup, "reference-headless", extra=warmup, teacher="encoder")
    assert reference.returncode == 0, reference.stderr
    # step 4 is the warm-up's last step: the kill lands inside the write of the warm-up's final checkpoint
    first = run_job(setup, "killed-warmup", kill="SIGKILL writing 4", extra=warmup, teacher="encoder")
    assert first.returncode == -signal.SIGKILL
    assert not (setup["root"] / "killed-warmup" / "teacher" / "final").exists()
    second = run_job(setup, "killed-warmup", extra=warmup, teacher="encoder")
    assert second.returncode == 0, second.stderr
    assert "incomplete" in second.stderr + second.stdout
    assert_same_student(setup, "killed-warmup", reference="reference-headless")
