"""`wid-hf` end to end on a tiny teacher and corpus: compress -> merge -> evaluate, resume after an interruption,
and a one-line error for each kind of bad input."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import ROOT, tiny_config, tiny_tokenizer
from transformers import AutoTokenizer, BertForMaskedLM, BertModel, GPT2Config, GPT2LMHeadModel

from wid_hf import cli
from wid_hf.pipeline import render_report

WORDS = [f"w{i}" for i in range(115)]


def write_corpus(path, n_docs=120, seed=0, words=30):
    g = torch.Generator().manual_seed(seed)
    with open(path, "w") as f:
        for _ in range(n_docs):
            ids = torch.randint(0, len(WORDS), (words,), generator=g)
            f.write(" ".join(WORDS[i] for i in ids) + "\n")
    return str(path)


@pytest.fixture
def workspace(tmp_path):
    return make_workspace(tmp_path)


def make_workspace(tmp_path):
    tokenizer = tiny_tokenizer(tmp_path / "teacher")
    torch.manual_seed(0)
    BertForMaskedLM(tiny_config()).save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    return {
        "dir": tmp_path,
        "teacher": str(tmp_path / "teacher"),
        "tokenizer": tokenizer,
        "train": write_corpus(tmp_path / "train.txt"),
        "eval": write_corpus(tmp_path / "eval.txt", n_docs=30, seed=1),
    }


def compress_args(ws, out="out", **over):
    args = {
        "--teacher": ws["teacher"], "--corpus": ws["train"], "--eval-corpus": ws["eval"], "--ratio": "0.5",
        "--steps": "12", "--batch-size": "4", "--seq-len": "32", "--mask-interval": "2", "--pruning-intervals": "2",
        "--eval-sequences": "8", "--save-steps": "4", "--head-warmup-steps": "4", "--output-dir": str(ws["dir"] / out),
        "--learning-rate": "1e-3", "--compactor-learning-rate": "1e-2",
    }
    args.update(over)
    return ["compress", "--no-progress"] + [x for k, v in args.items() if v is not None for x in (k, v)]


def run_cli(argv, capsys):
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_compress_merge_evaluate(workspace, capsys):
    code, out, err = run_cli(compress_args(workspace), capsys)
    assert code == 0, err
    # --no-progress: no bar from any library (loading/writing weights, dataset maps, training), no load reports;
    # what is left fits on one screen
    assert "%|" not in err and "it/s]" not in err and "Loading weights" not in err, err
    assert len((out + err).splitlines()) <= 24, out + err
    job = workspace["dir"] / "out"
    for name in ("report.json", "report.md", "training.png", "schedule.png", "student/config.json",
                 "student/model.safetensors", "job.json"):
        assert (job / name).is_file(), name
    report = json.loads((job / "report.json").read_text())
    assert report["student"]["hidden_size"] == 24 and report["student"]["intermediate_size"] == 48
    assert report["training"]["steps"] == 12 and report["training"]["mlm_probability"] == 0.15
    assert report["student"]["merge_max_abs_deviation"] <= 1e-4
    # the report's numbers are the saved student's: measured again here on the same held-out sequences
    from wid_hf.data import heldout_sequences
    from wid_hf.evaluation import evaluate_mlm

    saved = BertForMaskedLM.from_pretrained(job / "student")
    heldout = heldout_sequences(workspace["eval"], AutoTokenizer.from_pretrained(job / "student"), 32, 8,
                                str(workspace["dir"] / "cache-again"))
    again = evaluate_mlm(saved, heldout, progressbar=False)
    for key in ("mlm_accuracy", "mlm_loss"):
        assert again[key] == pytest.approx(report["heldout"]["student"][key], abs=1e-5), key
    assert report["compression_ratio"] > 1.5 and report["inference"]["flop_ratio"] > 1
    assert "held-out masked-LM accuracy" in (job / "report.md").read_text()
    # how context-dependent each model's held-out top-1 is, and a flag for a student that predicts one token
    assert "held-out top-1 predictions" in (job / "report.md").read_text()
    assert report["heldout"]["student"]["top1_distinct"] >= 1 and 0 < report["heldout"]["student"]["top1_share"] <= 1
    report["heldout"]["student"].update(top1_distinct=1, top1_share=1.0, top1_most_common_token="the")
    assert "predicts `the` at every held-out masked position" in render_report(report)
    report["heldout"]["student"].update(top1_distinct=3, top1_share=0.6)
    assert "predicts `the` at 60% of the held-out masked positions" in render_report(report)
    assert "Train longer (--max_steps)" in render_report(report)
    # fill-mask examples, teacher beside student, and timings taken in alternation
    assert len(report["fill_mask"]["examples"]) == 5 and set(report["fill_mask"]["uses_context"]) == {"teacher",
                                                                                                     "student"}
    assert report["inference"]["teacher"]["interleaved"] and "Fill-mask, top 3" in (job / "report.md").read_text()

    # the student loads with plain transformers in a process that never imports wid_hf
    check = textwrap.dedent(f"""
        import sys
        from transformers import BertForMaskedLM
        m = BertForMaskedLM.from_pretrained({str(job / 'student')!r})
        assert 'wid_hf' not in sys.modules and m.config.hidden_size == 24
    """)
    assert subprocess.run([sys.executable, "-c", check], capture_output=True).returncode == 0

    code, out, err = run_cli(["merge", "--checkpoint", str(job), "--output", str(workspace["dir"] / "merged")], capsys)
    assert code == 0, err
    merged = BertForMaskedLM.from_pretrained(workspace["dir"] / "merged")
    original = BertForMaskedLM.from_pretrained(job / "student")
    for (n, a), (_, b) in zip(merged.state_dict().items(), original.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), n

    results = workspace["dir"] / "eval.json"
    code, out, err = run_cli(["evaluate", "--model", workspace["teacher"], "--model", str(job / "student"),
                              "--eval-corpus", workspace["eval"], "--sequences", "8", "--seq-len", "32",
                              "--output", str(results)], capsys)
    assert code == 0, err
    data = json.loads(results.read_text())
    assert set(data) == {workspace["teacher"], str(job / "student")}
    assert out.count("held-out MLM loss") == 2 and out.count("different tokens") == 2
    student = data[str(job / "student")]["heldout"]
    tokenizer = AutoTokenizer.from_pretrained(job / "student")
    assert student["top1_most_common_token"] == tokenizer.convert_ids_to_tokens(student["top1_most_common"])


def test_interrupted_job_resumes_where_it_stopped(workspace, capsys, monkeypatch):
    from wid_hf import trainer as wid_trainer

    def interrupt(self, args, state, control, **kw):
        if state.global_step == 6:
            raise KeyboardInterrupt

    monkeypatch.setattr(wid_trainer.WIDCallback, "on_step_end", interrupt, raising=False)
    code, out, err = run_cli(compress_args(workspace), capsys)
    assert code == 130 and "run the same command again to resume" in err
    checkpoints = os.listdir(workspace["dir"] / "out" / "checkpoints")
    assert "checkpoint-4" in checkpoints and "checkpoint-12" not in checkpoints
    monkeypatch.undo()

    code, out, err = run_cli(compress_args(workspace), capsys)
    assert code == 0, err
    assert "resuming from" in out and "checkpoint-4" in out
    report = json.loads((workspace["dir"] / "out" / "report.json").read_text())
    assert report["training"]["steps"] == 12


def test_teacher_without_mlm_head_gets_one_first(workspace, capsys):
    headless = workspace["dir"] / "encoder"
    BertModel(tiny_config()).save_pretrained(headless)
    workspace["tokenizer"].save_pretrained(headless)
    code, out, err = run_cli(compress_args(workspace, **{"--teacher": str(headless)}), capsys)
    assert code == 0, err
    assert "has no MLM head" in out
    report = json.loads((workspace["dir"] / "out" / "report.json").read_text())
    assert report["teacher"]["has_mlm_head"] is False and "MLM head" in report["teacher"]["head_warmup"]
    assert (workspace["dir"] / "out" / "teacher" / "final" / "config.json").is_file()


def _one_line_error(code, err, *needles):
    lines = [line for line in err.strip().splitlines() if line.startswith("wid-hf")]
    assert code == 2 and len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_bad_inputs_get_one_line_errors(workspace, capsys):
    ws = workspace
    code, _, err = run_cli(compress_args(ws, **{"--teacher": str(ws["dir"] / "missing")}), capsys)
    _one_line_error(code, err, "No teacher at")

    gpt = ws["dir"] / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50)).save_pretrained(gpt)
    code, _, err = run_cli(compress_args(ws, **{"--teacher": str(gpt)}), capsys)
    _one_line_error(code, err, "'gpt2' model", "BERT")

    empty = ws["dir"] / "empty.txt"
    empty.write_text("\n\n")
    code, _, err = run_cli(compress_args(ws, out="o2", **{"--corpus": str(empty)}), capsys)
    _one_line_error(code, err, "no text")
    (ws["dir"] / "zero.txt").write_bytes(b"")  # 0 bytes: datasets itself fails on it (DatasetGenerationError)
    code, _, err = run_cli(compress_args(ws, out="o2", **{"--corpus": str(ws["dir"] / "zero.txt")}), capsys)
    _one_line_error(code, err, "zero.txt", "empty")

    (ws["dir"] / "a_file").write_text("not a folder")
    code, _, err = run_cli(compress_args(ws, out="a_file"), capsys)
    _one_line_error(code, err, "--output-dir", "is a file")

    # size errors name the flags the user typed, not the Python API's names
    code, _, err = run_cli(compress_args(ws, out="o6", **{"--ratio": None, "--target-hidden-size": "16"}), capsys)
    _one_line_error(code, err, "--target-hidden-size", "--ratio 0.5", "--preset wid55")
    assert "WIDConfig" not in err and "target_ratio" not in err, err
    code, _, err = run_cli(compress_args(ws, out="o6", **{"--ratio": "1.5"}), capsys)
    _one_line_error(code, err, "--ratio must be in (0, 1]")

    code, _, err = run_cli(compress_args(ws, out="o3", **{"--ratio": None, "--target-hidden-size": "22",
                                                         "--target-intermediate-size": "40"}), capsys)
    _one_line_error(code, err, "divisible by 4", "[20, 24]")

    missing = ws["dir"] / "max_steps" / "nope.txt"  # a path is never reworded into flags
    code, _, err = run_cli(compress_args(ws, out="o4", **{"--corpus": str(missing)}), capsys)
    _one_line_error(code, err, str(missing))

    assert run_cli(compress_args(ws, out="o5", **{"--steps": "6"}), capsys)[0] == 0
    code, _, err = run_cli(compress_args(ws, out="o5", **{"--steps": "8"}), capsys)
    _one_line_error(code, err, "different job", "--steps", "--overwrite")

    code, _, err = run_cli(["merge", "--checkpoint", str(ws["dir"] / "nowhere"), "--output", "x"], capsys)
    _one_line_error(code, err, "No checkpoint")


def test_help_is_complete():
    for command in ("compress", "merge", "evaluate", "prepare-teacher"):
        out = subprocess.run([sys.executable, "-m", "wid_hf", command, "--help"], capture_output=True, text=True,
                             cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
        assert out.returncode == 0 and "usage: wid-hf " + command in out.stdout, out.stderr
    out = subprocess.run([sys.executable, "-m", "wid_hf", "compress", "--help"], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}).stdout
    for flag in ("--teacher", "--corpus", "--preset", "--ratio", "--steps", "--output-dir", "--seq-len"):
        assert flag in out


def test_prepare_teacher_and_finetune_evaluation(workspace, capsys):
    headless = workspace["dir"] / "encoder"
    BertModel(tiny_config()).save_pretrained(headless)
    workspace["tokenizer"].save_pretrained(headless)
    code, out, err = run_cli(["prepare-teacher", "--teacher", str(headless), "--corpus", workspace["train"],
                              "--steps", "6", "--batch-size", "4", "--seq-len", "32",
                              "--output", str(workspace["dir"] / "prepared")], capsys)
    assert code == 0, err
    prepared = workspace["dir"] / "prepared" / "final"
    model = BertForMaskedLM.from_pretrained(prepared)
    fresh = BertForMaskedLM.from_pretrained(headless)  # the encoder with a new head: its output bias starts at zero
    assert not fresh.cls.predictions.bias.any() and model.cls.predictions.bias.abs().min() > 0  # the head trained
    encoder = BertModel.from_pretrained(headless)  # and the encoder adapted (--encoder-lr 1e-4 by default)
    assert not torch.equal(model.bert.encoder.layer[0].intermediate.dense.weight,
                           encoder.encoder.layer[0].intermediate.dense.weight)

    task = workspace["dir"] / "task.csv"
    with open(task, "w") as f:
        for i in range(60):
            f.write(f'"{1 if i % 2 else -1}","{"w1 w2 w3" if i % 2 else "w7 w8 w9"} w{i % 50 + 10}"\n')
    code, out, err = run_cli(["evaluate", "--model", str(prepared), "--eval-corpus", workspace["eval"],
                              "--sequences", "4", "--seq-len", "32", "--task", "csv", "--task-file", str(task),
                              "--seeds", "0", "1", "--epochs", "1", "--output", str(workspace["dir"] / "ft.json")],
                             capsys)
    assert code == 0, err
    result = json.loads((workspace["dir"] / "ft.json").read_text())[str(prepared)]["finetune"]
    assert result["metric"] == "accuracy" and len(result["scores"]) == 2 and result["eval_examples"] == 12
    assert result["metric_source"] in ("evaluate", "local (the Hub is unreachable, so evaluate.load could not be used)")
    assert all(abs(score * 12 - round(score * 12)) < 1e-9 for score in result["scores"])  # k right of 12 examples


def test_compress_with_kd_and_depth_reduction(workspace, capsys):
    code, out, err = run_cli(compress_args(workspace, **{"--kd": "attention_kl", "--keep-layers": "upper:1"}), capsys)
    assert code == 0, err
    report = json.loads((workspace["dir"] / "out" / "report.json").read_text())
    assert report["student"]["num_hidden_layers"] == 1 and report["student"]["kd_objective"] == "attention_kl"
    assert report["student"]["merge_max_abs_deviation"] <= 1e-4
    # `merge` from the job directory selects the same layer before loading the checkpoint
    code, out, err = run_cli(["merge", "--checkpoint", str(workspace["dir"] / "out"),
                              "--output", str(workspace["dir"] / "merged")], capsys)
    assert code == 0, err
    merged = BertForMaskedLM.from_pretrained(workspace["dir"] / "merged")
    assert merged.config.num_hidden_layers == 1
    # the raw checkpoint on the full teacher is a clear error, not a key dump
    checkpoint = sorted((workspace["dir"] / "out" / "checkpoints").glob("checkpoint-*"))[-1]
    code, out, err = run_cli(["merge", "--teacher", workspace["teacher"], "--checkpoint", str(checkpoint),
                              "--output", str(workspace["dir"] / "m2")], capsys)
    _one_line_error(code, err, "has 1 layers", "select the same layers")


def test_baseline_command(workspace, capsys):
    code, out, err = run_cli(["baseline", "--method", "etd-impt", "--objective", "attention_kl", "--teacher",
                              workspace["teacher"], "--corpus", workspace["train"], "--eval-corpus", workspace["eval"],
                              "--steps", "4", "--batch-size", "4", "--seq-len", "32", "--eval-sequences", "4",
                              "--layers", "0", "--output-dir", str(workspace["dir"] / "b")], capsys)
    assert code == 0, err
    result = json.loads((workspace["dir"] / "b" / "report.json").read_text())["student"]
    assert result["layers"] == [0] and result["objective"] == "attention_kl"
    student = BertForMaskedLM.from_pretrained(workspace["dir"] / "b" / "student")
    assert student.config.hidden_size == 24 and student.config.num_hidden_layers == 1
    with pytest.raises(SystemExit) as exited:  # argparse's own one-line usage error
        cli.main(["baseline", "--method", "random", "--output-dir", "x", "--layers", "top:2"])
    assert exited.value.code == 2 and "lower:N" in capsys.readouterr().err
