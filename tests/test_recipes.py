"""Recipes run for real: the paper-student script on its --smoke inputs, and the quickstart notebook top to bottom."""

import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, tiny_config, tiny_tokenizer
from test_cli import write_corpus
from transformers import BertForMaskedLM


@pytest.mark.slow
@pytest.mark.parametrize("student", ["wid55", "wid11-head"])
def test_pretrain_recipe_smoke(tmp_path, student):
    teacher = tmp_path / "teacher"
    tiny_tokenizer(teacher)
    torch.manual_seed(0)
    BertForMaskedLM(tiny_config(hidden=64, heads=4, intermediate=128)).save_pretrained(teacher)
    corpus = write_corpus(tmp_path / "corpus.txt", n_docs=80)
    out = tmp_path / "run"
    cmd = [sys.executable, os.path.join(ROOT, "recipes", "pretrain_wid.py"), "--student", student, "--output-dir",
           str(out), "--smoke", str(teacher), corpus]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": ROOT})
    assert result.returncode == 0, result.stderr[-3000:]
    student_model = BertForMaskedLM.from_pretrained(out / "student")
    assert student_model.config.hidden_size == 32
    assert (out / "training.png").is_file() and (out / "checkpoint-12" / "wid_model.safetensors").is_file()


@pytest.mark.slow
def test_quickstart_notebook_runs_top_to_bottom(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    sys.path.insert(0, os.path.join(ROOT, "recipes"))
    from build_notebook import build

    # the committed notebook must be the one built from quickstart.py
    rebuilt = build(target=str(tmp_path / "rebuilt.ipynb"))
    committed = nbformat.read(os.path.join(ROOT, "recipes", "quickstart.ipynb"), as_version=4)
    assert [c.source for c in nbformat.read(rebuilt, as_version=4).cells] == [c.source for c in committed.cells]

    os.environ["WID_QUICKSTART_STEPS"] = "16"
    client = nbclient.NotebookClient(committed, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = "".join(o.get("text", "") for c in committed.cells if c.cell_type == "code" for o in c.get("outputs", [])
                      if o.get("name") == "stdout")  # progress bars go to stderr
    assert "BertForMaskedLM 192 768" in outputs
    guesses = outputs.strip().splitlines()[-3:]  # the fill-mask cell prints "'token': score" for the top 3
    assert all(re.fullmatch(r"'.+': [01]\.\d{3}", line) for line in guesses), guesses
