"""benchmarks/quality.py runs every method end to end (tiny teacher, a few steps) so the benchmark cannot rot."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, tiny_config
from transformers import BertForMaskedLM

from wid_hf.teacher import OFFLINE_TEACHER, load_teacher


@pytest.mark.slow
def test_quality_benchmark_smoke(tmp_path):
    tokenizer = load_teacher(OFFLINE_TEACHER).tokenizer  # real text needs a real vocabulary
    torch.manual_seed(0)
    BertForMaskedLM(tiny_config(vocab=len(tokenizer), layers=4)).save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "quality.py"), "--teacher", str(tmp_path / "teacher"),
           "--steps", "4", "--batch", "4", "--seq-len", "32", "--hidden", "24", "--ffn", "48", "--eval-sequences", "8",
           "--finetune-seeds", "0", "--finetune-max-train", "24", "--workdir", str(tmp_path / "work"),
           "--out", str(tmp_path / "results")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": ROOT})
    assert out.returncode == 0, out.stderr[-4000:]
    results = json.loads((tmp_path / "results" / "quality.json").read_text())
    assert list(results["methods"]) == ["teacher", "wid", "wid+attention", "etd-impt+mlm", "etd-rand+mlm",
                                        "etd-impt+attention", "truncation", "weight-distill", "random+mlm"]
    for name, entry in results["methods"].items():
        assert 0 <= entry["heldout"]["mlm_accuracy"] <= 1
        assert "bbc-topics" in entry["finetune"]
        if name not in ("teacher", "truncation"):
            assert entry["config"]["hidden_size"] == 24, name
    assert (tmp_path / "results" / "quality.png").is_file()
    assert "| wid |" in (tmp_path / "results" / "quality.md").read_text()
