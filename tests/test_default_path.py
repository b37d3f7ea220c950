"""The README's first command on a small budget: the real offline default (the all-MiniLM-L6-v2 sentence encoder
from PyPI, which has no MLM head, the Wikipedia leads, BBC News held out), end to end through the CLI. The demo
is only worth running if its teacher and student are masked-LMs that read their input: a student whose top-1
prediction is the same whatever its context (as the demo's was while its teacher was a head on a frozen encoder)
fails here."""

import json

from wid_hf import cli


def test_default_path_gives_a_teacher_and_student_that_read_their_input(tmp_path, capsys):
    # the default teacher, corpus, held-out text, method (WID in budget mode), widths (half) and teacher warm-up
    # (200 steps); shorter sequences and run than the demo's to fit CI (~4 min here). Measured on this setting
    # (2026-11-28, seeds 0/1/2, 64 held-out sequences = 600 masked positions): a collapsed student takes 1-3
    # different top-1 tokens with 60-100% of positions on one; one that reads its input takes 13-35, at most 45% on
    # one. Five fill-mask sentences cannot tell them apart at this budget (healthy students gave 2-4 different
    # words, so they only describe); nor could an 80-step warm-up, after which the teacher itself gave 2 words on one
    # seed. Fewer WID steps are not a smaller test of the same thing: at 20 or 60 steps budget mode leaves a student
    # that predicts one word everywhere (measured), the failure this test exists to catch.
    out = tmp_path / "demo"
    code = cli.main(["compress", "--output-dir", str(out), "--no-progress", "--steps", "120", "--seq-len", "64",
                     "--head-warmup-steps", "200", "--eval-sequences", "64", "--save-steps", "1000"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads((out / "report.json").read_text())
    assert report["teacher"]["has_mlm_head"] is False and "encoder adapted" in report["teacher"]["head_warmup"]
    assert report["student"]["hidden_size"] == 192 and report["wid_config"]["mask_scoring"] == "taylor"
    # the teacher's fill-mask top-1 word changes with the sentence (5 sentences)
    fill = report["fill_mask"]
    assert fill["distinct_top1"]["teacher"] >= 4, fill
    # over the held-out masked positions, neither model's top-1 is one token nearly everywhere
    heldout = report["heldout"]
    for name in ("teacher", "student"):
        assert heldout[name]["top1_distinct"] >= 8 and heldout[name]["top1_share"] <= 0.55, (name, heldout[name])
    report_md = (out / "report.md").read_text()
    assert "Different top-1 words over the 5 sentences" in report_md and "held-out top-1 predictions" in report_md
