"""benchmarks/step_speed.py runs end to end (tiny shape) and writes its table, so the benchmark cannot rot."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_step_speed_benchmark_smoke(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "step_speed.py"), "--shapes", "tiny", "--batches", "2",
           "--seq", "16", "--repeats", "1", "--out", str(tmp_path), "--name", "speed"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": ROOT})
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads((tmp_path / "speed.json").read_text())["rows"]
    runs = {(r["mode"], r["before"]) for r in rows}
    assert runs == {("teacher", True), ("teacher", False), ("student", False), ("wid-pruning", True),
                    ("wid-pruning", False), ("wid-hard", True), ("wid-hard", False), ("wid-hard-whole", False)}
    assert all(r["step_s"] > 0 and r["peak_mib"] > 0 and r["gflop"] > 0 for r in rows)
    assert {r["adamw"] for r in rows} == {"for-loop"}  # torch's default AdamW has no foreach kernels on CPU
    hard = {r["before"]: r["gflop"] for r in rows if r["mode"] == "wid-hard"}
    assert hard[False] < hard[True]  # the student path and the masked-position head do less work
    whole = next(r["gflop"] for r in rows if r["mode"] == "wid-hard-whole")
    assert whole == pytest.approx(hard[False])  # compacting changes storage and optimizer work, not the products
    table = (tmp_path / "speed.md").read_text()
    assert "| tiny | 2x16 | wid-hard (before) | 24x48 |" in table and "| tiny | 2x16 | wid-hard | 24x48 |" in table


@pytest.mark.slow
def test_step_speed_subset_fused_optimizer_and_profile(tmp_path):
    script = os.path.join(ROOT, "benchmarks", "step_speed.py")
    env = {**os.environ, "PYTHONPATH": ROOT}
    cmd = [sys.executable, script, "--shapes", "tiny", "--batches", "2", "--seq", "16", "--repeats", "1",
           "--modes", "teacher", "wid-hard", "--optimizer", "fused", "--out", str(tmp_path), "--name", "speed"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads((tmp_path / "speed.json").read_text())
    assert {r["mode"] for r in data["rows"]} == {"teacher", "wid-hard"} and data["meta"]["optimizer"] == "fused"
    assert {r["adamw"] for r in data["rows"]} == {"fused"} and "AdamW implementation: fused." in (tmp_path / "speed.md").read_text()
    # --profile: the operator table goes to stderr, the one-line result stays on stdout
    worker = [sys.executable, script, "--worker", "--shape", "tiny", "--mode", "wid-hard", "--batch", "2", "--seq",
              "16", "--repeats", "1", "--profile", "5"]
    out = subprocess.run(worker, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "aten::" in out.stderr and json.loads(out.stdout.strip().splitlines()[-1])["step_s"] > 0


@pytest.mark.slow
def test_step_speed_with_gradient_accumulation_folds_once(tmp_path):
    """--accumulation 3 counts FLOPs per optimizer step; folding once per step does less work than every micro-batch."""
    gflop = {}
    for fold_once in (True, False):
        cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "step_speed.py"), "--worker", "--shape", "tiny",
               "--mode", "wid-pruning", "--batch", "8", "--seq", "32", "--repeats", "1", "--accumulation", "3"]
        out = subprocess.run(cmd + ([] if fold_once else ["--no-fold-once"]), capture_output=True, text=True,
                             timeout=600, env={**os.environ, "PYTHONPATH": ROOT})
        assert out.returncode == 0, out.stderr[-3000:]
        gflop[fold_once] = json.loads(out.stdout.strip().splitlines()[-1])["gflop"]
    assert gflop[True] < gflop[False]


def test_schedule_projections_use_every_measured_batch():
    """The WID11 projection is made for each BERT-base batch measured (a GPU run at 128x128 alone gets one too):
    8,500 steps at the pruning cost, the rest of 400,000 at the hard-mask cost of the WID11 shape."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import step_speed

    def row(mode, target, before, step_s):
        return dict(shape="base", batch=128, mode=mode, target=target, before=before, step_s=step_s)

    rows = [row("teacher", "half", True, 0.25), row("wid-pruning", "half", True, 0.33),
            row("wid-pruning", "half", False, 0.28), row("wid-hard", "half", True, 0.34),
            row("wid-hard", "wid11", False, 0.08)]
    (entry,) = step_speed.projections(rows)
    assert "128x128" in entry["run"] and entry["hard_mask_step"] == 8_500
    assert entry["before"] == pytest.approx(8_500 * 0.33 + 391_500 * 0.34)
    assert entry["after"] == pytest.approx(8_500 * 0.28 + 391_500 * 0.08)
    assert entry["plain_teacher"] == pytest.approx(400_000 * 0.25)


def test_without_the_rows_of_the_code_as_it_was_the_teachers_reference_stays_and_projections_are_made():
    """--no-before measures the code as it is; the plain teacher's transformers-loss row (every ratio's reference)
    stays, and the WID11 projection is made from the "after" rows alone."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import step_speed

    runs = step_speed.plan(["base"], [8], before=False)
    assert [(r["mode"], r["before"]) for r in runs if r["before"]] == [("teacher", True)]
    assert {r["mode"] for r in runs} == set(step_speed.MODES)
    rows = [dict(r, step_s=0.1 if r["mode"] == "wid-pruning" else 0.05) for r in runs]
    (entry, *budget) = step_speed.projections(rows)
    assert "before" not in entry and entry["after"] == pytest.approx(8_500 * 0.1 + 391_500 * 0.05)
    assert budget == []  # no MiniLM rows: no budget-mode projection


def test_reproject_recomputes_stale_projections_from_the_measured_rows(tmp_path):
    """--reproject measures nothing: it keeps a results file's rows and measurement date and recomputes the
    projections with the schedule as it is now (a file whose 1,500-step budget run was projected with hard masks at
    step 825 gets budget mode's current hard-mask step)."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import step_speed
    from wid_hf.config import TeacherDims, WIDConfig
    from wid_hf.schedule import pruning_end_step

    def row(mode, target, before, step_s):
        return dict(shape="minilm", batch=8, seq=128, mode=mode, target=target, before=before, step_s=step_s,
                    gflop=1.0, peak_mib=100.0)

    rows = [row("teacher", "half", True, 0.9), row("student", "half", False, 0.3),
            row("wid-pruning", "half", False, 1.1), row("wid-hard", "half", False, 0.6)]
    stale = [{"run": "budget mode, 1500 steps", "hard_mask_step": 825, "total_steps": 1500, "after": 1.0}]
    meta = {"torch": "x", "device": "cpu"}
    (tmp_path / "old.json").write_text(json.dumps({"meta": meta, "rows": rows, "projections": stale}))
    (tmp_path / "old.md").write_text("Measured 2026-01-02 on {...}.\n")

    text = step_speed.reproject(str(tmp_path), "old")
    written = json.loads((tmp_path / "old.json").read_text())
    assert written["rows"] == rows and written["meta"]["measured"] == "2026-01-02"
    assert text.startswith("Measured 2026-01-02 on ") and "Projections recomputed" in text
    by_steps = {p["total_steps"]: p for p in written["projections"]}
    assert set(by_steps) == set(step_speed.BUDGET_STEPS)
    dims = TeacherDims(384, 1536, 12)
    for steps, entry in by_steps.items():
        config = WIDConfig.for_budget(steps, target_hidden_size=192, target_intermediate_size=768).resolve(dims)
        hard = pruning_end_step(config, dims, {"hidden", "attention", "ffn", "head"}) + config.mask_interval
        assert entry["hard_mask_step"] == hard
        assert entry["after"] == pytest.approx(hard * 1.1 + (steps - hard) * 0.6)
        assert entry["plain_student"] == pytest.approx(steps * 0.3)
    assert by_steps[1500]["hard_mask_step"] != 825

    with pytest.raises(SystemExit, match="does not exist"):
        step_speed.reproject(str(tmp_path), "missing")
    (tmp_path / "other.json").write_text(json.dumps({"setup": {}, "runs": {}}))  # another benchmark's results
    with pytest.raises(SystemExit, match="not a results file of this benchmark"):
        step_speed.reproject(str(tmp_path), "other")
