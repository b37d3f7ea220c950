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
    common = [sys.executable, os.path.join(ROOT, "benchmarks", "quality.py"), "--teacher", str(tmp_path / "teacher"),
              "--steps", "4", "--batch", "4", "--seq-len", "32", "--hidden", "24", "--ffn", "48", "--eval-sequences", "8",
              "--validation-sequences", "8", "--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "results")]
    env = {**os.environ, "PYTHONPATH": ROOT}
    # the learning-rate search: every method at every rate, chosen on the validation split
    search = subprocess.run(common + ["--search", "--methods", "wid-budget", "random+mlm", "--lr-grid", "1e-3", "2e-3"],
                            capture_output=True, text=True, timeout=900, env=env)
    assert search.returncode == 0, search.stderr[-4000:]
    found = json.loads((tmp_path / "results" / "lr_search-4.json").read_text())
    assert len(found["runs"]) == 4 and set(found["chosen"]) == {"wid-budget", "random+mlm"}
    assert found["runs"]["wid-budget@0.001"]["compactor_learning_rate"] == 1e-4

    out = subprocess.run(common + ["--finetune-tasks", "bbc-topics", "--finetune-seeds", "0", "--finetune-max-train",
                                   "24", "--finetune-epochs", "1", "--lr-from",
                                   str(tmp_path / "results" / "lr_search-4.json")],
                         capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stderr[-4000:]
    results = json.loads((tmp_path / "results" / "quality-4.json").read_text())
    assert list(results["methods"]) == ["teacher", "wid-budget", "wid-reference", "wid+attention", "etd-impt+mlm",
                                        "etd-rand+mlm", "etd-impt+attention", "truncation", "weight-distill",
                                        "random+mlm"]
    assert results["methods"]["wid-budget"]["learning_rate"] == found["chosen"]["wid-budget"]
    assert results["methods"]["wid-budget"]["mlm_probability"] == 0.15  # BERT's rate, recorded with every row
    for name, entry in results["methods"].items():
        assert 0 <= entry["heldout"]["mlm_accuracy"] <= 1
        assert "bbc-topics" in entry["finetune"]
        if name not in ("teacher", "truncation"):
            assert entry["config"]["hidden_size"] == 24, name
    assert results["methods"]["wid-budget"]["hard_masks"]["step"] is not None
    assert (tmp_path / "results" / "quality-4.png").is_file()
    table = (tmp_path / "results" / "quality-4.md").read_text()
    assert "| wid-budget |" in table
    hard_rows = table.split("hard-mask step")[-1]  # the second table: one row per WID run that reached hard masks
    for name in ("wid-budget", "wid-reference", "wid+attention"):
        assert f"| {name} | {results['methods'][name]['hard_masks']['step']} |" in hard_rows, name
    # an ablation: one option of a method against the method's row above, decided on the validation split
    ablation = subprocess.run(common + ["--ablation", "non-monotone", "hard-at-0.75", "taylor-window-interval",
                                        "--lr-from", str(tmp_path / "results" / "lr_search-4.json")],
                              capture_output=True, text=True, timeout=900, env=env)
    assert ablation.returncode == 0, ablation.stderr[-4000:]
    run = json.loads((tmp_path / "results" / "ablations.json").read_text())["runs"]["non-monotone@4"]
    assert run["settings"] == {"monotone_masks": False} and run["method"] == "wid-budget"
    assert run["seed"] == 0 and run["mlm_probability"] == 0.15
    assert run["without"]["validation"] == results["methods"]["wid-budget"]["validation"]
    assert 0 <= run["validation"]["mlm_accuracy"] <= 1
    assert "| wid-budget + non-monotone | 4 |" in (tmp_path / "results" / "ablations.md").read_text()
    later = json.loads((tmp_path / "results" / "ablations.json").read_text())["runs"]["hard-at-0.75@4"]
    assert later["settings"] == {"hard_mask_at": 0.75} and later["hard_masks"]["step"] is not None
    # a setting that scales with the run is recorded as run (at 4 steps: one-step intervals, so the 10-step floor)
    scaled = json.loads((tmp_path / "results" / "ablations.json").read_text())["runs"]["taylor-window-interval@4"]
    assert scaled["settings"] == {"taylor_window": 10}
    sweep = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "quality.py"), "--sweep-chart",
                            str(tmp_path / "results")], capture_output=True, text=True, timeout=300, env=env)
    assert sweep.returncode == 0, sweep.stderr[-4000:]
    assert (tmp_path / "results" / "budget_sweep.png").is_file()
    # a variant outside the default methods, at its method's searched rate, then over two seeds (a file stem as OUT)
    late = subprocess.run(common[:-2] + ["--out", str(tmp_path / "seed1"), "--seed", "1", "--methods", "wid-budget",
                                         "wid-budget-late", "wid-budget+logit", "--finetune-tasks", "--lr-from",
                                         str(tmp_path / "results" / "lr_search-4.json")],
                          capture_output=True, text=True, timeout=900, env=env)
    assert late.returncode == 0, late.stderr[-4000:]
    seed1_methods = json.loads((tmp_path / "seed1" / "quality-4.json").read_text())["methods"]
    for name in ("wid-budget-late", "wid-budget+logit"):  # WID with logit KD: budget mode's schedule and rate
        assert seed1_methods[name]["learning_rate"] == found["chosen"]["wid-budget"], name
        assert seed1_methods[name]["hard_masks"]["step"] is not None, name
    # methods added to a finished table by a later invocation (no fine-tuning there): the setup keeps every method
    # the file holds, and the header still describes the fine-tuning of the rows that have it; without --lr-from,
    # the search at these steps in --out gives the rates (a variant takes its method's)
    added = subprocess.run(common + ["--methods", "etd-impt+mlm-warm", "wid-budget-group-scores", "teacher+mlm",
                                     "--finetune-tasks"], capture_output=True, text=True, timeout=900, env=env)
    assert added.returncode == 0, added.stderr[-4000:]
    assert "covers etd-impt+mlm-warm; it runs at --lr 0.0005" in added.stderr  # the fallback is said, not silent
    grown = json.loads((tmp_path / "results" / "quality-4.json").read_text())
    assert grown["setup"]["methods"] == [*list(results["methods"])[1:], "etd-impt+mlm-warm", "wid-budget-group-scores",
                                         "teacher+mlm"]
    assert grown["methods"]["wid-budget-group-scores"]["learning_rate"] == found["chosen"]["wid-budget"]
    # the teacher trained the same way: every layer at full width, at WID's rate
    assert grown["methods"]["teacher+mlm"]["learning_rate"] == found["chosen"]["wid-budget"]
    assert grown["methods"]["teacher+mlm"]["config"] == grown["methods"]["teacher"]["config"]
    assert grown["methods"]["etd-impt+mlm-warm"]["learning_rate"] == 5e-4  # --lr: no search covered it
    assert grown["methods"]["etd-impt+mlm-warm"]["finetune"] == {}
    assert grown["setup"]["finetune_tasks"] == ["bbc-topics"] and grown["setup"]["finetune_epochs"] == 1
    assert "Fine-tuning: 1 epochs on at most 24 examples" in (tmp_path / "results" / "quality-4.md").read_text()
    # an ablation already measured, compared again with another run of its method (no training: nothing to redo)
    again = subprocess.run(common + ["--ablation", "non-monotone", "--without-from", str(tmp_path / "seed1")],
                           capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stderr[-4000:]
    redone = json.loads((tmp_path / "results" / "ablations.json").read_text())["runs"]["non-monotone@4"]
    seed1 = json.loads((tmp_path / "seed1" / "quality-4.json").read_text())["methods"]["wid-budget"]
    assert redone["without"]["validation"] == seed1["validation"] and redone["validation"] == run["validation"]
    assert redone["without_from"].endswith(os.path.join("seed1", "quality-4.json"))
    # one dropout per results file: these rows trained at each method's own (0 in budget mode), so rows at the
    # teacher's 0.1 are refused there, and the table says which it is
    assert grown["setup"]["train_dropout"] is None
    assert "Dropout while training: each method's own: 0" in (tmp_path / "results" / "quality-4.md").read_text()
    mixed = subprocess.run(common + ["--methods", "random+mlm", "--train-dropout", "0.1", "--finetune-tasks"],
                           capture_output=True, text=True, timeout=300, env=env)
    assert mixed.returncode != 0 and "leave out --train-dropout" in mixed.stderr, mixed.stderr[-4000:]
    seeds = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "quality.py"), "--seeds-table",
                            str(tmp_path / "two-seeds"), str(tmp_path / "results" / "quality-4.json"),
                            str(tmp_path / "seed1" / "quality-4.json")],
                           capture_output=True, text=True, timeout=300, env=env)
    assert seeds.returncode == 0, seeds.stderr[-4000:]
    table = json.loads((tmp_path / "two-seeds.json").read_text())["methods"]
    assert table["wid-budget"]["0"]["heldout"] == results["methods"]["wid-budget"]["heldout"]
    assert set(table["wid-budget"]) == {"0", "1"} and "wid-budget-late" not in table  # only in one of the runs
    assert "| wid-budget |" in (tmp_path / "two-seeds.md").read_text()
    # the sweep over seeds, from seeds tables (one budget here): mean ± std of each method, and the chart
    chart = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "quality.py"), "--seeds-sweep-chart",
                            str(tmp_path / "sweep-seeds"), str(tmp_path / "two-seeds.json")],
                           capture_output=True, text=True, timeout=300, env=env)
    assert chart.returncode == 0, chart.stderr[-4000:]
    held = [table["wid-budget"][s]["heldout"]["mlm_accuracy"] for s in ("0", "1")]
    assert f"| wid-budget | {sum(held) / 2:.3f} ± " in (tmp_path / "sweep-seeds.md").read_text()
    assert (tmp_path / "sweep-seeds.png").is_file()


def test_rate_follows_shared_rates_to_a_searched_method(tmp_path):
    """A variant of a variant (etd-impt+logit-warm -> etd-impt+mlm-warm -> etd-impt+mlm) takes the first searched
    rate along the chain; the variant's own choice comes first."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import quality

    searched = tmp_path / "lr_search.json"
    searched.write_text(json.dumps({"chosen": {"etd-impt+mlm": 3e-4, "wid-budget": 2e-4}}))
    a = quality.argparse.Namespace(lr_from=str(searched), out=str(tmp_path), lr=5e-4)
    assert quality.rate(a, "etd-impt+logit-warm", 600) == 3e-4
    assert quality.rate(a, "wid-budget+logit", 600) == 2e-4
    searched.write_text(json.dumps({"chosen": {"etd-impt+mlm": 3e-4, "etd-impt+mlm-warm": 1e-3}}))
    assert quality.rate(a, "etd-impt+logit-warm", 600) == 1e-3


def test_seeds_tables_and_their_chart_keep_one_dropout_per_method(tmp_path):
    """Seeds of a method at two dropouts would read as the spread over seeds, and a sweep through two settings as a
    trend: both are refused, and the tables say which dropout trained each method."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import quality

    def run(name, seed, steps=120, **setup):  # a quality-<steps>.json as far as the seeds tables read it
        entry = {"validation": {"mlm_accuracy": 0.2, "mlm_loss": 5.0}, "train_seconds": 10.0,
                 "heldout": {"mlm_accuracy": 0.1 + seed / 100, "mlm_loss": 6.0}}
        path = tmp_path / f"{name}-{seed}.json"
        path.write_text(json.dumps({"setup": {"steps": steps, "seed": seed, **setup},
                                    "methods": {"wid-budget": entry, "wid-reference": entry}}))
        return str(path)

    # each method's own (no --train-dropout): 0 in budget mode, the teacher's 0.1 for the reference WID rows
    quality.seeds_table(str(tmp_path / "own"), [run("own", 0, train_dropout=None), run("own", 1, train_dropout=None)])
    assert json.loads((tmp_path / "own.json").read_text())["train_dropout"] == {"wid-budget": 0.0, "wid-reference": 0.1}
    assert "Dropout while training: wid-budget 0, wid-reference 0.1." in (tmp_path / "own.md").read_text()
    # --train-dropout 0 is budget mode's own value, not the reference rows'; a file from before the flag is 0.1
    with pytest.raises(SystemExit, match="wid-reference trained with dropout 0 and 0.1 in these runs"):
        quality.seeds_table(str(tmp_path / "mixed"),
                            [run("own", 0, train_dropout=None), run("zero", 1, train_dropout=0)])
    with pytest.raises(SystemExit, match="wid-budget trained with dropout 0 and 0.1 in these runs"):
        quality.seeds_table(str(tmp_path / "mixed"), [run("own", 0, train_dropout=None), run("before", 1)])
    assert not (tmp_path / "mixed.json").exists()
    quality.seeds_table(str(tmp_path / "before"), [run("before", 0, steps=600), run("before", 1, steps=600)])
    assert "Dropout while training: 0.1 for every method." in (tmp_path / "before.md").read_text()

    quality.seeds_sweep_chart(str(tmp_path / "sweep"), [str(tmp_path / "own.json")])
    assert "Dropout while training: wid-budget 0, wid-reference 0.1." in (tmp_path / "sweep.md").read_text()
    table = json.loads((tmp_path / "before.json").read_text())
    del table["train_dropout"]  # a seeds table written before tables kept their dropout: the teacher's 0.1
    (tmp_path / "before.json").write_text(json.dumps(table))
    with pytest.raises(SystemExit, match="wid-budget trained with dropout 0 in one table and 0.1 in another"):
        quality.seeds_sweep_chart(str(tmp_path / "mixed"), [str(tmp_path / "own.json"), str(tmp_path / "before.json")])


def test_seeds_chart_draws_a_method_under_another_name_and_the_teachers_mark(tmp_path):
    """'FILE:OLD=NEW' puts a table's OLD on NEW's line (the md says so); a name the table lacks, or one that would give
    a budget two points, is refused; the teacher's mark comes from the results files the tables were made from."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import quality

    def table(steps, **methods):  # a seeds table (--seeds-table) as far as the chart reads it
        results = tmp_path / f"quality-{steps}.json"
        results.write_text(json.dumps({"methods": {"teacher": {"heldout": {"mlm_accuracy": 0.3},
                                                               "validation": {"mlm_accuracy": 0.4}}}}))
        path = tmp_path / f"seeds-{steps}.json"
        path.write_text(json.dumps({"steps": steps, "files": [str(results)], "train_dropout": {m: 0.0 for m in methods},
                                    "methods": {m: {"0": {"heldout": {"mlm_accuracy": h}, "train_seconds": 10.0,
                                                          "validation": {"mlm_accuracy": h + 0.1}}}
                                                for m, h in methods.items()}}))
        return str(path)

    short = table(600, **{"wid-budget": 0.21, "wid-budget hard-at-0.4": 0.22})
    long = table(3000, **{"wid-budget": 0.25})
    quality.seeds_sweep_chart(str(tmp_path / "sweep"), [short, long + ":wid-budget=wid-budget hard-at-0.4"])
    md = (tmp_path / "sweep.md").read_text()
    assert "seeds-3000.json (its wid-budget drawn as wid-budget hard-at-0.4)" in md
    assert "| wid-budget | 0.210 ± 0.000 / 0.310 ± 0.000 (10; 1 seeds) | - |" in md  # no 3,000-step point
    assert "| wid-budget hard-at-0.4 | 0.220 ± 0.000 / 0.320 ± 0.000 (10; 1 seeds) | 0.250 ± 0.000" in md
    assert "Teacher: held-out 0.300 (85%: 0.255), validation 0.400." in md
    assert (tmp_path / "sweep.png").is_file()
    with pytest.raises(SystemExit, match="has no method wid-late to draw under another name"):
        quality.seeds_sweep_chart(str(tmp_path / "bad"), [long + ":wid-late=wid-budget"])
    with pytest.raises(SystemExit, match="would draw two of its methods as wid-budget; draw each line once"):
        quality.seeds_sweep_chart(str(tmp_path / "bad"), [short + ":wid-budget hard-at-0.4=wid-budget"])
    with pytest.raises(SystemExit, match="would draw two of its methods as wid-late"):
        quality.seeds_sweep_chart(str(tmp_path / "bad"),
                                  [short + ":wid-budget=wid-late,wid-budget hard-at-0.4=wid-late"])
    quality.seeds_sweep_chart(str(tmp_path / "swap"),  # a swap gives each line one point
                              [short + ":wid-budget=wid-budget hard-at-0.4,wid-budget hard-at-0.4=wid-budget"])
    assert "| wid-budget | 0.220 ± 0.000" in (tmp_path / "swap.md").read_text()
    with pytest.raises(SystemExit, match="give FILE or FILE:OLD=NEW"):
        quality.seeds_sweep_chart(str(tmp_path / "bad"), [long + ":wid-budget"])
    other = json.loads((tmp_path / "quality-600.json").read_text())
    other["methods"]["teacher"]["heldout"]["mlm_accuracy"] = 0.2
    (tmp_path / "quality-600.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="hold different teachers"):
        quality.seeds_sweep_chart(str(tmp_path / "bad"), [short, long])
    assert not (tmp_path / "bad.md").exists()


def test_an_ablation_compares_with_its_methods_row_at_the_same_dropout(tmp_path):
    """The method's row decides, not the file's setup: budget mode's own dropout is 0, so --train-dropout 0 compares
    with a row run without the flag; the teacher's 0.1 does not, nor does a file from before the flag."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import quality

    def results(**setup):
        path = tmp_path / f"quality-{len(list(tmp_path.iterdir()))}.json"
        path.write_text(json.dumps({"setup": setup, "methods": {"wid-budget": {}, "wid-reference": {}}}))
        return str(path)

    def given(value):
        return quality.argparse.Namespace(train_dropout=value)

    own = results(train_dropout=None)
    quality.check_method_dropout(own, given(0.0), "wid-budget")
    quality.check_method_dropout(own, given(None), "wid-budget")
    with pytest.raises(SystemExit, match="wid-budget trained with dropout 0, this run would train it with 0.1"):
        quality.check_method_dropout(own, given(0.1), "wid-budget")
    with pytest.raises(SystemExit, match="give --train-dropout 0.1"):  # the reference rows' own is the teacher's
        quality.check_method_dropout(own, given(0.0), "wid-reference")
    before = results()  # no train_dropout: every row at the teacher's 0.1
    quality.check_method_dropout(before, given(0.1), "wid-budget")
    with pytest.raises(SystemExit, match="give --train-dropout 0.1"):
        quality.check_method_dropout(before, given(None), "wid-budget")
    quality.check_method_dropout(before, given(0.0), "etd-impt+mlm")  # no row of that method: nothing to compare


def test_seeds_tables_take_the_ablations_measured_against_each_seeds_file(tmp_path):
    """An ablation (--ablation) measured against every seed's results file is a row of the seeds table, named
    '<method> <option>'; one measured against another file, at another budget or on some seeds only is not."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import quality

    def row(accuracy):
        return {"validation": {"mlm_accuracy": accuracy, "mlm_loss": 4.0}, "train_seconds": 100.0,
                "heldout": {"mlm_accuracy": accuracy / 2, "mlm_loss": 6.0}}

    paths = []
    for seed in (0, 1, 2):
        folder = tmp_path / f"seed{seed}"
        folder.mkdir()
        path = folder / "quality-1500.json"
        path.write_text(json.dumps({"setup": {"steps": 1500, "seed": seed, "train_dropout": None},
                                    "methods": {"teacher": row(0.4), "wid-budget": row(0.37)}}))
        runs = {"hard-at-0.4@1500": {"option": "hard-at-0.4", "method": "wid-budget", "steps": 1500,
                                     "train_dropout": 0.0, "without_from": str(path), **row(0.36 + seed / 100)},
                "hard-at-0.4@600": {"option": "hard-at-0.4", "method": "wid-budget", "steps": 600,
                                    "without_from": str(path), **row(0.3)},
                "elsewhere@1500": {"option": "elsewhere", "method": "wid-budget", "steps": 1500,
                                   "without_from": str(tmp_path / "other.json"), **row(0.3)}}
        if seed == 0:
            runs["one-seed@1500"] = {"option": "one-seed", "method": "wid-budget", "steps": 1500,
                                     "without_from": str(path), **row(0.3)}
        (folder / "ablations.json").write_text(json.dumps({"runs": runs}))
        paths.append(str(path))
    quality.seeds_table(str(tmp_path / "seeds"), paths)
    table = json.loads((tmp_path / "seeds.json").read_text())
    assert list(table["methods"]) == ["wid-budget", "wid-budget hard-at-0.4"]
    assert [table["methods"]["wid-budget hard-at-0.4"][s]["validation"]["mlm_accuracy"] for s in "012"] == [
        0.36, 0.37, 0.38]
    assert table["train_dropout"] == {"wid-budget": 0.0, "wid-budget hard-at-0.4": 0.0}
    assert "| wid-budget hard-at-0.4 | 0.370 ± 0.010 |" in (tmp_path / "seeds.md").read_text()


def test_a_records_table_gathers_single_runs_of_ablations_and_searches_into_a_chartable_seeds_table(tmp_path):
    """--records-table: runs recorded in ablations.json and lr_search-<steps>.json files, one per seed, make a seeds
    table (each run's seed, dropout and numbers; the teacher's mark from the results files the ablations compared
    with), which the sweep chart draws; runs of two budgets, two runs of a seed, two dropouts, a record that does not
    say its seed and a key the file lacks are refused, naming what to give instead."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import quality

    def row(accuracy, seconds=100.0):
        return {"validation": {"mlm_accuracy": accuracy, "mlm_loss": 4.0}, "train_seconds": seconds,
                "heldout": {"mlm_accuracy": accuracy / 2, "mlm_loss": 6.0}}

    results = tmp_path / "quality-600.json"
    results.write_text(json.dumps({"setup": {"steps": 600, "seed": 1}, "methods": {"teacher": row(0.4)}}))
    search = tmp_path / "lr_search-600.json"  # seed 0: the search's runs, one of them reused from an ablation
    search.write_text(json.dumps({"setup": {"steps": [600], "seed": 0, "train_dropout": 0.0}, "runs": {
        "wid-budget+mlm-0.3@0.001": {"method": "wid-budget+mlm-0.3", "learning_rate": 1e-3, **row(0.35, 600.0)},
        "etd-impt+mlm-warm+mlm-0.4@0.002": {"method": "etd-impt+mlm-warm+mlm-0.4", "from": "ablations.json",
                                            **row(0.34, 200.0)}}}))

    def ablation(option, method, seed, accuracy, steps=600, **more):
        return {"option": option, "method": method, "steps": steps, "seed": seed, "train_dropout": 0.0,
                "without_from": str(results), **row(accuracy), **more}

    ablations = tmp_path / "ablations.json"
    ablations.write_text(json.dumps({"runs": {
        "mlm-0.3@600": ablation("mlm-0.3", "wid-budget", 1, 0.36),
        "mlm-0.4/etd@600": ablation("mlm-0.4/etd", "etd-impt+mlm-warm", 1, 0.33),
        "mlm-0.3@120": ablation("mlm-0.3", "wid-budget", 1, 0.2, steps=120),
        "dropout@600": ablation("dropout", "wid-budget", 2, 0.39, train_dropout=0.1),
        "old@600": {k: v for k, v in ablation("old", "wid-budget", 2, 0.3).items() if k != "seed"}}}))
    wid = f"WID={search}:wid-budget+mlm-0.3@0.001,{ablations}:mlm-0.3@600"
    etd = f"ETD={search}:etd-impt+mlm-warm+mlm-0.4@0.002,{ablations}:mlm-0.4/etd@600"
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "quality.py"), "--records-table",
                          str(tmp_path / "records-600"), wid, etd], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-4000:]
    table = json.loads((tmp_path / "records-600.json").read_text())
    assert table["steps"] == 600 and table["files"] == [str(results)]
    assert table["train_dropout"] == {"WID": 0.0, "ETD": 0.0}
    assert {s: r["validation"]["mlm_accuracy"] for s, r in table["methods"]["WID"].items()} == {"0": 0.35, "1": 0.36}
    assert table["methods"]["ETD"]["0"]["train_seconds"] == 200.0
    md = (tmp_path / "records-600.md").read_text()
    assert "| WID | 0.355 ± 0.007 |" in md and f"{search}:wid-budget+mlm-0.3@0.001" in md
    quality.seeds_sweep_chart(str(tmp_path / "sweep"), [str(tmp_path / "records-600.json")])
    assert "Teacher: held-out 0.200 (85%: 0.170)" in (tmp_path / "sweep.md").read_text()

    def refused(*args, match):
        with pytest.raises(SystemExit, match=match):
            quality.records_table(str(tmp_path / "bad"), list(args))

    refused(f"WID={search}:wid-budget+mlm-0.3@0.001,{ablations}:mlm-0.3@120", match="runs of one budget, got steps "
                                                                                     r"\[120, 600\]")
    refused(f"WID={ablations}:mlm-0.3@600,{ablations}:mlm-0.4/etd@600", match=r"two runs of one seed \(\[1, 1\]\)")
    refused(f"WID={search}:wid-budget+mlm-0.3@0.001,{ablations}:dropout@600", match="dropout 0 and 0.1")
    refused(f"WID={ablations}:old@600", match="does not record its seed")
    refused(f"WID={ablations}:mlm-0.3@3000", match="holds mlm-0.3@600, mlm-0.4/etd@600, mlm-0.3@120")
    refused(f"WID={tmp_path / 'none.json'}:mlm-0.3@600", match="give FILE:KEY")
    refused(f"WID={results}:wid-budget", match="holds no runs")  # a results file is no record of runs
    refused(wid, wid.replace("wid-budget+mlm-0.3@0.001,", ""), match="WID is named twice")
    refused("WID=", match="names no runs")
    assert not (tmp_path / "bad.json").exists()


def test_a_search_of_an_option_reuses_its_measured_run_and_gives_the_options_rate(tmp_path):
    """--search --ablation searches the option's method with the option ('<method>+<option>'); a run of the option
    already in --out's ablations.json at a rate of the grid and the same seed counts as that rate's run (no
    training), one of another seed does not, and the option's later runs take the rate chosen for it, not the
    method's."""
    tokenizer = load_teacher(OFFLINE_TEACHER).tokenizer
    torch.manual_seed(0)
    BertForMaskedLM(tiny_config(vocab=len(tokenizer), layers=2)).save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    out = tmp_path / "results"
    out.mkdir()
    measured = {"learning_rate": 1e-3, "train_dropout": 0.0, "seed": 0, "train_seconds": 1.0,
                "validation": {"mlm_accuracy": 0.99, "mlm_loss": 0.1}, "heldout": {"mlm_accuracy": 0.5, "mlm_loss": 1.0}}
    other_seed = {**measured, "seed": 1}
    (out / "ablations.json").write_text(json.dumps({"runs": {"mlm-0.3/etd@4": measured,
                                                            "mlm-0.4/etd@4": other_seed}}))
    common = [sys.executable, os.path.join(ROOT, "benchmarks", "quality.py"), "--teacher", str(tmp_path / "teacher"),
              "--steps", "4", "--batch", "2", "--seq-len", "32", "--hidden", "24", "--ffn", "48", "--eval-sequences", "4",
              "--validation-sequences", "4", "--workdir", str(tmp_path / "work"), "--out", str(out),
              "--train-dropout", "0"]
    env = {**os.environ, "PYTHONPATH": ROOT}
    search = subprocess.run(common + ["--search", "--ablation", "mlm-0.3/etd", "mlm-0.4/etd", "--lr-grid", "1e-3",
                                      "2e-3"], capture_output=True, text=True, timeout=600, env=env)
    assert search.returncode == 0, search.stderr[-4000:]
    found = json.loads((out / "lr_search-4.json").read_text())
    assert set(found["runs"]) == {f"etd-impt+mlm-warm+mlm-0.{p}@0.00{n}" for p in (3, 4) for n in (1, 2)}
    reused, trained = found["runs"]["etd-impt+mlm-warm+mlm-0.3@0.001"], found["runs"]["etd-impt+mlm-warm+mlm-0.3@0.002"]
    assert reused["from"] == "ablations.json" and reused["validation"] == measured["validation"]
    assert "from" not in trained and trained["heldout"]["mlm_accuracy"] < 0.99  # trained: recorded on both splits
    assert "from" not in found["runs"]["etd-impt+mlm-warm+mlm-0.4@0.001"]  # seed 1's run is no run of seed 0
    assert found["runs"]["etd-impt+mlm-warm+mlm-0.4@0.001"]["mlm_probability"] == 0.4  # the option's masking
    work = os.listdir(tmp_path / "work")
    assert "etd-impt_mlm-warm_mlm-0.4-4-lr0.001" in work and "etd-impt_mlm-warm_mlm-0.3-4-lr0.001" not in work
    assert found["chosen"]["etd-impt+mlm-warm+mlm-0.3"] == 1e-3  # the better validation accuracy
    assert found["setup"]["methods"] == ["etd-impt+mlm-warm+mlm-0.3", "etd-impt+mlm-warm+mlm-0.4"]
    # the option's rate serves its runs before the method's own (which a search at 15% chose)
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import quality

    chosen = {"etd-impt+mlm-warm+mlm-0.3": 1e-3, "etd-impt+mlm-warm": 5e-4}
    (out / "lr_search-4.json").write_text(json.dumps({**found, "chosen": chosen}))
    a = quality.argparse.Namespace(lr_from=None, out=str(out), lr=2e-4)
    assert quality.rate(a, "etd-impt+mlm-warm", 4, "mlm-0.3/etd") == 1e-3
    assert quality.rate(a, "etd-impt+mlm-warm", 4) == 5e-4
    assert quality.rate(a, "etd-impt+mlm-warm", 4, "mlm-0.4/etd") == 5e-4  # no search of that option
