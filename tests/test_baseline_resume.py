"""Every baseline resumes exactly, as WID does (tests/test_kill_resume.py): the real CLI in its own process is
killed by a real SIGTERM it sends itself right after a checkpoint is complete, the same command is run again, and
the student must equal the one of an uninterrupted run within 1e-6. Covers the state outside the student that a
resume must restore: the `hidden` objective's learned projection and Weight Distillation's generator phase (killed
inside it, and after it, in the student's own training)."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT
from safetensors.torch import load_file
from test_cli import make_workspace

pytestmark = pytest.mark.slow

# `KILL` = "<folder> <step>": SIGTERM once checkpoint-<step> under a folder named <folder> is complete.
WRAPPER = textwrap.dedent("""
    import os, signal, sys
    import transformers
    from wid_hf import cli

    kill = os.environ.get("KILL")
    if kill:
        folder, step = kill.split()
        original = transformers.Trainer._save_checkpoint
        def _save_checkpoint(self, model, trial):
            original(self, model, trial)
            if self.state.global_step == int(step) and os.path.basename(self.args.output_dir) == folder:
                os.kill(os.getpid(), signal.SIGTERM)
        transformers.Trainer._save_checkpoint = _save_checkpoint
    sys.exit(cli.main(sys.argv[1:]))
""")

CASES = {  # name: (flags, where the kill lands)
    "etd-impt": (["--method", "etd-impt"], "checkpoints 4"),
    "etd-rand": (["--method", "etd-rand"], "checkpoints 4"),
    "truncation": (["--method", "truncation", "--keep-layers", "lower:1"], "checkpoints 4"),
    "random": (["--method", "random"], "checkpoints 4"),
    "weight-distill-generator": (["--method", "weight-distill"], "generator 2"),
    "weight-distill-student": (["--method", "weight-distill"], "checkpoints 2"),
    "hidden": (["--method", "etd-rand", "--objective", "hidden"], "checkpoints 4"),
}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    ws = make_workspace(tmp_path_factory.mktemp("baselines"))
    (ws["dir"] / "wrapper.py").write_text(WRAPPER)
    return ws


def run(ws, out, flags, kill=None):
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    env.pop("KILL", None)
    if kill:
        env["KILL"] = kill
    argv = ["baseline", "--teacher", ws["teacher"], "--corpus", ws["train"], "--eval-corpus", ws["eval"],
            "--output-dir", str(ws["dir"] / out), "--ratio", "0.5", "--steps", "8", "--batch-size", "4",
            "--seq-len", "32", "--eval-sequences", "8", "--save-steps", "2", "--seed", "3", "--no-progress", *flags]
    return subprocess.run([sys.executable, str(ws["dir"] / "wrapper.py"), *argv], capture_output=True, text=True,
                          env=env, timeout=600)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_killed_baseline_resumes_to_the_same_student(ws, case):
    flags, kill = CASES[case]
    reference = "reference" + "".join(flags).replace("--", "-").replace(":", "")
    if not (ws["dir"] / reference / "report.json").is_file():  # both weight-distill cases share one reference
        done = run(ws, reference, flags)
        assert done.returncode == 0, done.stderr[-3000:]
    first = run(ws, case, flags, kill=kill)
    assert first.returncode == -signal.SIGTERM, first.stderr[-3000:]
    assert not (ws["dir"] / case / "report.json").exists()
    second = run(ws, case, flags)
    assert second.returncode == 0, second.stderr[-3000:]
    folder, step = kill.split()
    resumed = os.path.join(ws["dir"], case, "checkpoints", *(["generator"] if folder == "generator" else []),
                           f"checkpoint-{step}")
    assert f"resuming from {resumed}" in second.stdout, second.stdout
    a = load_file(ws["dir"] / reference / "student" / "model.safetensors")
    b = load_file(ws["dir"] / case / "student" / "model.safetensors")
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= 1e-6, f"{case}: the resumed student differs from the uninterrupted one by {worst:.3g}"
