"""The README's first command on a small budget: the real offline default (the all-MiniLM-L6-v2 sentence encoder
from PyPI, which has no MLM head, the Wikipedia leads, BBC News held out), end to end through the CLI. The demo
is only worth running if its teacher and student are masked-LMs that read their input: a student whose top-1
prediction is the same for every sentence (as the demo's was while its teacher was a head on a frozen encoder)
fails here."""

import json

from wid_hf import cli


def test_default_path_gives_a_teacher_and_student_that_read_their_input(tmp_path, capsys):
    # the default teacher, corpus, held-out text, method (WID in budget mode) and widths (half); shorter sequences,
    # warm-up and run than the demo's to fit CI (~4 min here). Fewer WID steps are not a smaller test of the same
    # thing: at 20 or 60 steps budget mode leaves a student that predicts one word everywhere (measured), the
    # failure this test exists to catch.
    out = tmp_path / "demo"
    code = cli.main(["compress", "--output-dir", str(out), "--no-progress", "--steps", "120", "--seq-len", "64",
                     "--head-warmup-steps", "80", "--eval-sequences", "16", "--save-steps", "1000"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads((out / "report.json").read_text())
    assert report["teacher"]["has_mlm_head"] is False and "encoder adapted" in report["teacher"]["head_warmup"]
    assert report["student"]["hidden_size"] == 192 and report["wid_config"]["mask_scoring"] == "taylor"
    fill = report["fill_mask"]
    # the top-1 word changes with the sentence (5 sentences), for the teacher and for the student
    assert fill["distinct_top1"]["teacher"] >= 4, fill
    assert fill["distinct_top1"]["student"] >= 3, fill
    assert "Different top-1 words over the 5 sentences" in (out / "report.md").read_text()
