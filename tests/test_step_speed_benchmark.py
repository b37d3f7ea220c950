"""benchmarks/step_speed.py runs end to end (tiny shape) and writes its table, so the benchmark cannot rot."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_step_speed_benchmark_smoke(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "step_speed.py"), "--shape", "tiny", "--batches", "2",
           "--seq", "16", "--repeats", "1", "--out", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": ROOT})
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads((tmp_path / "step_speed_tiny.json").read_text())["rows"]
    assert {"plain", "wid", "wid-pruning", "wid-hard"} <= set(rows[0])
    assert all(rows[0][m]["step_s"] > 0 and rows[0][m]["peak_rss_mib"] > 0 for m in ("plain", "wid"))
    assert "effective_weights_s" in rows[0]["wid"]
    assert "| tiny | 2x16 | wid |" in (tmp_path / "step_speed_tiny.md").read_text()
