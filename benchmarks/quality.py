"""Quality of WID against the baselines of the literature at equal compute, on one teacher, corpus and seed.

Every method gets the same teacher (default: ../shared/teachers/minilm-l6-h384-mlm, or one rebuilt with
`wid-hf prepare-teacher`), the same training text (offline Wikipedia leads packed into sequences of --seq-len), the same
batch size, number of optimizer steps and seed, and targets hidden 192 / FFN 768 (half width, same layers):

  wid-budget         WID in budget mode (WIDConfig.for_budget: Taylor scores, linear decay, monotone masks)
  wid-budget-late    the same with hard masks at 75% of the run (--hard_mask_at 0.75; default 55%, 40% from 1,000 steps)
  wid-budget-group-scores  the same with the earlier form of a step's Taylor scores (--taylor_per_compactor false)
  wid-reference      WID with the reference method on the same scaled schedule (norm scores, Adam-routed penalty)
  wid+attention      WID (reference) plus MiniLM-style attention transfer (KL on attention distributions, last layer)
  etd-impt+mlm       Extract-Then-Distill, first-order importance on 16 corpus batches, then masked-LM
  etd-impt+mlm-warm  the same with a 10% learning-rate warm-up instead of every method's 1% (--warmup_steps 0.1)
  etd-rand+mlm       Extract-Then-Distill with random indices, then masked-LM
  etd-impt+attention ETD-Impt, then attention transfer (+ masked-LM, alpha 0.5)
  truncation         the teacher's lower layers at full width (as many as fit the student's encoder budget) + MLM
  weight-distill     Weight Distillation: generator for half the steps, then the materialised student
  random+mlm         random initialisation at the student's shape + masked-LM (the floor)
  teacher+mlm        the teacher itself, full width, trained the same way at WID's rate (not a student: how much of
                     the gap to the teacher comes from training on this corpus rather than from compression)

Every method trains on batches with 15% of the tokens masked (BERT's rate, budget mode's default until 2026-12-07 and
that of every committed row; budget mode's default is 30% since): `--ablation mlm-0.3` (and `mlm-0.3/etd`) runs a
method at budget mode's rate of today, `mlm-0.4` at 40%.

Learning rates: every method gets the same search (`--search`: each value of --lr-grid at the given --steps, chosen by
masked-LM accuracy on --validation-sequences held back from the *training* corpus; WID's compactors always train at
a tenth of the inherited weights' rate). The held-out BBC News text is never used to choose anything.

Measured: held-out masked-LM loss/accuracy on BBC News (not seen in training; fixed masks), optionally fine-tuned
accuracy on the Pang & Lee polarity sentences and BBC topics (fixed 80/20 splits, several seeds, mean ± std),
parameters and wall time. Each budget writes benchmarks/results/quality-<steps>.{json,md,png}; each finished method is
saved at once and a rerun skips it (and every pipeline job resumes), so a long run can be stopped and restarted.
`--ablation NAME` runs one option of a method (ABLATIONS below, e.g. `reference-decay`: WID budget mode with the
paper's Adam-routed penalty instead of the linear decay) at --steps and the method's searched rate, with no
fine-tuning, and writes ablations.{json,md} beside the method's own row of quality-<steps>.json (or, with
`--without-from DIR`, beside DIR's run of it: WID runs on another CPU differ by rounding); options are adopted on the
validation split; `--search --ablation NAME` searches the learning rate of the method with the option (a run of the
option already in --out's ablations.json at a rate of the grid counts), and the option's runs then take that rate.
`--seed N` runs everything with another training seed (work folders get a -seedN suffix).
`--sweep-chart` draws budget_sweep.{png,md} from every quality-<steps>.json; `--seeds-table OUT FILE...` writes
seeds-<steps>.{json,md} (into the folder OUT, or as OUT.{json,md}) from runs of one budget with different --seed
values; `--records-table OUT NAME=FILE:KEY[,FILE:KEY...]...` writes OUT.{json,md}, such a table from single runs
recorded in ablations.json or lr_search-<steps>.json files (one per seed); `--seeds-sweep-chart OUT
FILE[:OLD=NEW]...` draws OUT.{png,md} from seeds tables, one per budget (OLD=NEW draws that table's method OLD as NEW).
Run it in the background:

    nohup python benchmarks/quality.py --search --steps 120 --methods wid-budget etd-impt+mlm > runs/search.log 2>&1 &
    nohup python benchmarks/quality.py --steps 600 --methods wid-budget etd-impt+mlm > runs/q600.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
SHARED_TEACHER = os.path.join(os.path.dirname(ROOT), "shared", "teachers", "minilm-l6-h384-mlm")
# benchmark name -> the pipeline's settings (wid_hf.pipeline.Job)
RUNS = {
    "wid-budget": dict(method="wid"),
    "wid-budget-late": dict(method="wid", hard_mask_at=0.75),  # hard masks at 75% of the run, not 55% (40% from 1,000)
    # budget mode before its training-step Taylor scores became per compactor: |sum over the group| of G*W
    "wid-budget-group-scores": dict(method="wid", taylor_per_compactor=False),
    "wid-reference": dict(method="wid", budget_mode=False),
    "wid+attention": dict(method="wid", objective="attention_kl", budget_mode=False),
    "etd-impt+mlm": dict(method="etd-impt"),
    "etd-impt+mlm-warm": dict(method="etd-impt", warmup_steps=0.1),  # a 10% learning-rate warm-up instead of 1%
    "etd-rand+mlm": dict(method="etd-rand"),
    "etd-impt+attention": dict(method="etd-impt", objective="attention_kl"),
    "truncation": dict(method="truncation"),
    "weight-distill": dict(method="weight-distill"),
    "random+mlm": dict(method="random"),
    # every teacher layer at full width ("truncation" that keeps all of them; run_method fills in the teacher's depth)
    "teacher+mlm": dict(method="truncation", keep_layers="all"),
    # WID and ETD-Impt with logit KD against the teacher (KD_ALPHA of the loss; a teacher forward pass every step)
    # beside the masked-LM-only forms: budget mode itself stays alignment-free
    "wid-budget+logit": dict(method="wid", objective="logit"),
    "etd-impt+logit-warm": dict(method="etd-impt", objective="logit", warmup_steps=0.1),
}
# variants of a method, run at that method's searched learning rate and left out of the default --methods
SAME_RATE_AS = {"wid-budget-late": "wid-budget", "wid-budget-group-scores": "wid-budget",
                "etd-impt+mlm-warm": "etd-impt+mlm", "teacher+mlm": "wid-budget", "wid-budget+logit": "wid-budget",
                "etd-impt+logit-warm": "etd-impt+mlm-warm"}
METHODS = [name for name in RUNS if name not in SAME_RATE_AS]


# --ablation name -> (the method it changes, the settings it changes): one option measured against the method as run.
# ablations.json also keeps "decaying-ln" (LayerNorm statistics following the linear decay, wid_hf at commit 3503f7e),
# measured and not adopted: the option was removed from the library.
ABLATIONS = {
    "reference-decay": ("wid-budget", dict(decay="reference")),  # pruned entries pushed through Adam (the paper's)
    "non-monotone": ("wid-budget", dict(monotone_masks=False)),  # masks re-selected from scratch at every update
    # a shorter or longer pruning phase: hard masks at 28% / 32.5% / 75% of the run instead of 55% (intervals of
    # 2% / 2.5% / 7.2% instead of 5%)
    "hard-at-0.28": ("wid-budget", dict(hard_mask_at=0.28)),
    "hard-at-0.325": ("wid-budget", dict(hard_mask_at=0.325)),
    "hard-at-0.75": ("wid-budget", dict(hard_mask_at=0.75)),
    # at long budgets an interval is long in steps (91 at 1,500): hard masks at 40% still leave 66 steps between
    # selections, and the student trains 60% of the run at its final shape (45% at 55%), where a step costs less.
    # Budget mode's default from 1,000 steps since 2026-12-02 (measured before against 55%, then the default there);
    # hard-at-0.55 measures the earlier default against today's at those lengths
    "hard-at-0.4": ("wid-budget", dict(hard_mask_at=0.4)),
    "hard-at-0.55": ("wid-budget", dict(hard_mask_at=0.55)),
    # whether the best fraction keeps falling as runs grow: at 1,500 steps 30% leaves 50 steps between selections and
    # 70% of the run at the final shape
    "hard-at-0.3": ("wid-budget", dict(hard_mask_at=0.3)),
    # a longer learning-rate warm-up (10% of the run instead of 1%), for WID and for ETD-Impt alike
    "warmup-0.1": ("wid-budget", dict(warmup_steps=0.1)),
    "warmup-0.1/etd": ("etd-impt+mlm", dict(warmup_steps=0.1)),
    # the compactors' learning rate as a fraction of the inherited weights' (WID_COMPACTOR_RATIO otherwise); 0 keeps
    # them at the identity but for the decay of pruned entries: gradual Taylor pruning of the teacher's own weights
    "compactor-ratio-0": ("wid-budget", dict(compactor_ratio=0.0)),
    "compactor-ratio-0.03": ("wid-budget", dict(compactor_ratio=0.03)),
    "compactor-ratio-0.3": ("wid-budget", dict(compactor_ratio=0.3)),
    # from 1,000 steps budget mode halves the inherited weights' rate to 5e-4, and the compactors' with it (5e-5); at
    # 0.2 the compactors keep 1e-4, their rate in shorter runs, which did not wreck the teacher there
    "compactor-ratio-0.2": ("wid-budget", dict(compactor_ratio=0.2)),
    # the Taylor scores' moving average over one mask interval (at least 10 steps; 36 at 600, 66 at 1,500 since hard
    # masks come at 40% there, 91 when it was measured) instead of ~10 steps, so the teacher's scores and more
    # batches reach the selections of long runs
    "taylor-window-interval": ("wid-budget", dict(taylor_window=lambda steps: max(10, _budget_interval(steps)))),
    # a training step's Taylor score per compactor (each compactor's |sum of G*W|, summed over the group), the form of
    # the teacher's initial scores, instead of |sum over the whole group|: measured against the group form, then
    # adopted as budget mode's default (so it now repeats wid-budget's run)
    "taylor-per-compactor": ("wid-budget", dict(taylor_per_compactor=True)),
    # ETD-Impt's importance summed over 64 training batches instead of 16 (its warmed-up form, the stronger one), and
    # budget mode's starting scores likewise (64 batches, drawn as WIDTrainer draws them)
    "importance-batches-64/etd": ("etd-impt+mlm-warm", dict(importance_batches=64)),
    "taylor-init-64": ("wid-budget", dict(taylor_init_batches=64)),
    # 30% of training tokens masked instead of 15% (twice the predictions per step, more corrupted inputs), for WID
    # and ETD-Impt alike; validation and held-out still mask 15%
    "mlm-0.3": ("wid-budget", dict(mlm_probability=0.3)),
    "mlm-0.3/etd": ("etd-impt+mlm-warm", dict(mlm_probability=0.3)),
    # the third rate of the search (15% / 30% / 40%), the one Wettig et al. found best for BERT-large
    "mlm-0.4": ("wid-budget", dict(mlm_probability=0.4)),
    "mlm-0.4/etd": ("etd-impt+mlm-warm", dict(mlm_probability=0.4)),
}


def ablation_settings(name, steps):
    """The method an --ablation changes and the settings it sets at `steps` (a setting may scale with the run)."""
    base, settings = ABLATIONS[name]
    return base, {k: v(steps) if callable(v) else v for k, v in settings.items()}


def _budget_interval(steps):
    from wid_hf import WIDConfig

    return WIDConfig.for_budget(steps, target_ratio=0.5).mask_interval


TASK_TITLES = {"bbc-topics": "BBC topics", "polarity": "polarity"}
WID_COMPACTOR_RATIO = 0.1  # WID's compactor learning rate, as a fraction of the inherited weights' (every search)


def run_label(name, ablation=None):
    """A run's name: the method, '+<option>' where an ablation (a key of ABLATIONS) changes it."""
    return name + (f"+{ablation.split('/')[0]}" if ablation else "")


def run_method(name, a, steps, lr, workdir, ablation=None):
    """One method through the same pipeline as `wid-hf compress` / `wid-hf baseline` (resumes; a finished run
    returns its report). `ablation` (a key of ABLATIONS) changes the settings it names."""
    from wid_hf.pipeline import MLM_PROBABILITY, Job, run

    # BERT's 15% of tokens masked, budget mode's default until 2026-12-07 and the rate of every committed row: kept
    # unless an --ablation (mlm-0.3, mlm-0.4) sets another, so that a rerun resumes and reproduces those rows
    settings = dict(mlm_probability=MLM_PROBABILITY, **RUNS[name])
    if settings.get("keep_layers") == "all":
        from transformers import AutoConfig

        settings["keep_layers"] = f"lower:{AutoConfig.from_pretrained(a.teacher).num_hidden_layers}"
    if ablation is not None:
        settings.update(ablation_settings(ablation, steps)[1])
    ratio = settings.pop("compactor_ratio", WID_COMPACTOR_RATIO)
    if settings["method"] == "wid":
        settings["compactor_learning_rate"] = lr * ratio
    if a.train_dropout is not None:
        settings["train_dropout"] = a.train_dropout
    tag = run_label(name, ablation)
    seed = f"-seed{a.seed}" if a.seed else ""  # seed 0 keeps the folder names of earlier runs
    job = Job.create(output_dir=os.path.join(workdir, f"{tag.replace('+', '_')}-{steps}-lr{lr:g}{seed}"),
                     teacher=a.teacher, corpus="offline-wiki", eval_corpus="offline-bbc", max_seq_length=a.seq_len,
                     eval_sequences=a.eval_sequences, validation_sequences=a.validation_sequences,
                     cache_dir=os.path.join(workdir, "cache"), max_steps=steps, per_device_train_batch_size=a.batch,
                     seed=a.seed, target_hidden_size=a.hidden, target_intermediate_size=a.ffn, learning_rate=lr,
                     save_steps=a.save_steps, disable_tqdm=True, **settings)
    return run(job)


# results files written before --train-dropout existed (2026-12-02) trained every method at the teacher's dropout
DROPOUT_BEFORE = 0.1


def dropout_words(value):
    return ("each method's own: 0 (budget mode, and the baselines with it), the teacher's 0.1 for the reference WID "
            "rows" if value is None else f"{value:g} for every method")


def method_dropout(setup, name):
    """The dropout method `name` trained with in a results file of this `setup`: --train-dropout where given, else the
    method's own (0 under budget mode, the baselines with it; the teacher's 0.1 for the reference WID rows); files
    written before --train-dropout existed trained every method at the teacher's 0.1."""
    if "train_dropout" not in setup:
        return DROPOUT_BEFORE
    if setup["train_dropout"] is not None:
        return setup["train_dropout"]
    return DROPOUT_BEFORE if RUNS.get(name, {}).get("budget_mode", True) is False else 0.0


def dropout_line(by_method):
    """'Dropout while training: ...' for {method: dropout}, the value once when every method shares it."""
    values = set(by_method.values())
    said = (f"{values.pop():g} for every method" if len(values) == 1 else
            ", ".join(f"{name} {p:g}" for name, p in by_method.items()))
    return f"Dropout while training: {said}."


def check_dropout(path, a):
    """The methods of one results file train with one dropout: refuse to add rows at another."""
    results = _load(path, {})
    if not [name for name in results.get("methods", {}) if name != "teacher"]:
        return
    then = results.get("setup", {}).get("train_dropout", DROPOUT_BEFORE)
    if then != a.train_dropout:
        raise SystemExit(f"{path}'s rows trained with dropout {dropout_words(then)}, this run with "
                         f"{dropout_words(a.train_dropout)}: "
                         + ("leave out --train-dropout" if then is None else f"give --train-dropout {then:g}")
                         + " to add to them, or another --out / --without-from.")


def check_method_dropout(path, a, name):
    """An option is compared with its method's row in `path` at the same dropout. The file's other rows do not
    matter here, so a row trained at the method's own dropout (no --train-dropout: 0 in budget mode) compares with a
    run given that value (--train-dropout 0), which check_dropout, guarding the whole file's setup, refuses."""
    results = _load(path, {})
    if name not in results.get("methods", {}):
        return
    then, now = method_dropout(results.get("setup", {}), name), method_dropout({"train_dropout": a.train_dropout}, name)
    if then != now:
        raise SystemExit(f"{path}'s {name} trained with dropout {then:g}, this run would train it with {now:g}: give "
                         f"--train-dropout {then:g}, or another --without-from.")


def _load(path, default):
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    return default


def _save(path, data):
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=2)
    os.replace(path + ".tmp", path)


def search(a):
    """Every method at every learning rate of the grid, at --steps; the best by validation accuracy. With --ablation,
    each option's method with the option instead, searched as '<method>+<option>' (its rate then serves the option's
    runs); a run of the option already in --out's ablations.json at a rate of the grid (same steps, dropout and
    seed) is that rate's run, not trained again; a record that does not say its seed (written before 2026-12-07) is
    trained again. Held-out numbers are recorded beside, never used to choose."""
    steps = a.steps[0]
    path = os.path.join(a.out, f"lr_search-{steps}.json")
    searched = ([(name, None) for name in a.methods] if not a.ablation else
                [(ablation_settings(option, steps)[0], option) for option in a.ablation])
    found = _load(path, {"setup": {**{k: v for k, v in vars(a).items() if k != "out"}, "methods": []}, "runs": {},
                         "chosen": {}})
    # a later search may widen the grid or add methods: the setup records every value and method searched
    found["setup"]["lr_grid"] = sorted(set(found["setup"]["lr_grid"]) | set(a.lr_grid))
    found["setup"]["methods"] = list(dict.fromkeys([*found["setup"]["methods"],
                                                    *(run_label(*run) for run in searched)]))
    measured = _load(os.path.join(a.out, "ablations.json"), {"runs": {}})["runs"]
    for name, option in searched:
        label = run_label(name, option)
        for lr in a.lr_grid:
            key = f"{label}@{lr:g}"
            if key in found["runs"]:
                continue
            done = measured.get(f"{option}@{steps}", {}) if option else {}
            if (done.get("learning_rate") == lr and done.get("seed") == a.seed
                    and done.get("train_dropout") == method_dropout({"train_dropout": a.train_dropout}, name)):
                found["runs"][key] = {"method": label, "learning_rate": lr, "validation": done["validation"],
                                      "heldout": done["heldout"], "train_seconds": done["train_seconds"],
                                      "from": "ablations.json"}
            else:
                report = run_method(name, a, steps, lr, a.workdir, ablation=option)  # a budget run reuses it
                found["runs"][key] = {"method": label, "learning_rate": lr,
                                      "compactor_learning_rate": report["training"]["compactor_learning_rate"],
                                      "mlm_probability": report["training"].get("mlm_probability"),
                                      "validation": report["validation"]["student"],
                                      "heldout": report["heldout"]["student"],
                                      "train_seconds": report["training"]["seconds"]}
            print(key, json.dumps(found["runs"][key]), flush=True)
            _save(path, found)
        tried = [r for r in found["runs"].values() if r["method"] == label]
        found["chosen"][label] = max(tried, key=lambda r: r["validation"]["mlm_accuracy"])["learning_rate"]
        _save(path, found)
    print("chosen:", json.dumps(found["chosen"]), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default=SHARED_TEACHER)
    p.add_argument("--methods", nargs="+", default=METHODS, choices=list(RUNS))
    p.add_argument("--steps", type=int, nargs="+", default=[120], help="one or more budgets (optimizer steps)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--hidden", type=int, default=192)
    p.add_argument("--ffn", type=int, default=768)
    p.add_argument("--search", action="store_true", help="run the learning-rate search at --steps and stop (with "
                                                         "--ablation: of each option's method with the option)")
    p.add_argument("--lr-grid", type=float, nargs="+", default=[2e-4, 5e-4, 1e-3])
    p.add_argument("--lr-from", help="lr_search JSON whose choices to use (default: --out's lr_search-<steps>.json "
                                     "where there is one, then lr_search-120.json)")
    p.add_argument("--lr", type=float, default=5e-4, help="learning rate of a method the search did not cover")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-steps", type=int, default=50, help="checkpoint interval (each run resumes)")
    p.add_argument("--validation-sequences", type=int, default=256,
                   help="sequences held back from the training corpus to choose learning rates on")
    p.add_argument("--finetune-tasks", nargs="*", default=["polarity"], choices=["polarity", "bbc-topics"])
    p.add_argument("--finetune-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--finetune-epochs", type=float, default=3.0)
    p.add_argument("--finetune-max-train", type=int, default=3200)
    p.add_argument("--eval-sequences", type=int, default=256)
    p.add_argument("--polarity-csv", default=os.environ.get("WID_HF_TEST_CORPORA") and os.path.join(
        os.environ["WID_HF_TEST_CORPORA"], "polarity-en-pang&lee2.csv"))
    p.add_argument("--workdir", default=os.path.join(ROOT, "runs", "quality"))
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--ablation", nargs="+", choices=list(ABLATIONS),
                   help="run these options of a method at --steps (its searched rate; no fine-tuning) and write "
                        "ablations.json, beside the method's own numbers from quality-<steps>.json")
    p.add_argument("--train-dropout", type=float, default=None,
                   help="dropout while every method trains (WIDConfig.train_dropout, which the pipeline gives the "
                        "baselines' students too); default: each method's own, 0 under budget mode since 2026-12-02. "
                        "Results written before trained at the teacher's 0.1: add --train-dropout 0.1 to extend them")
    p.add_argument("--without-from", metavar="DIR",
                   help="with --ablation: compare with the method's run in DIR/quality-<steps>.json (e.g. one run on "
                        "the same machine) instead of --out's; refreshes that comparison for ablations already run")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    if a.search:
        return search(a)
    if a.ablation:
        return ablations(a)
    for steps in a.steps:
        run_budget(a, steps)


def rate(a, name, steps, ablation=None):
    """A method's learning rate at `steps`: from --lr-from if given, else from the searches in --out, the one at these
    steps (lr_search-<steps>.json) before the one at 120; with an `ablation`, the rate searched for the method with
    it (--search --ablation) before the method's own; a method's own choice before that of the method whose rate it
    shares (SAME_RATE_AS, followed to its end); --lr for a method no search covered."""
    budgets = dict.fromkeys((steps, 120))  # once each, in this order
    files = [a.lr_from] if a.lr_from else [os.path.join(a.out, f"lr_search-{n}.json") for n in budgets]
    # the method with the option, the method, then the method whose rate it shares, and so on (etd-impt+logit-warm
    # -> ... +mlm)
    keys = [run_label(name, ablation)] if ablation else []
    keys.append(name)
    while keys[-1] in SAME_RATE_AS:
        keys.append(SAME_RATE_AS[keys[-1]])
    for path in files:
        chosen = _load(path, {}).get("chosen", {})
        for key in keys:
            if key in chosen:
                return chosen[key]
    print(f"warning: no learning-rate search in {files} covers {name}; it runs at --lr {a.lr:g}", file=sys.stderr,
          flush=True)
    return a.lr


def ablations(a):
    """Each --ablation at each --steps against its method's run in quality-<steps>.json (same setup and rate). The
    decision to adopt an option is taken on the validation split; held-out numbers are recorded, not used."""
    path = os.path.join(a.out, "ablations.json")
    found = _load(path, {"runs": {}})
    for steps in a.steps:
        for name in a.ablation:
            key = f"{name}@{steps}"
            base, settings = ablation_settings(name, steps)  # as run at these steps
            if key in found["runs"] and not a.without_from:
                continue  # measured, and compared with the run it was compared with then
            source = os.path.join(a.without_from or a.out, f"quality-{steps}.json")
            check_method_dropout(source, a, base)  # with and without the option at one dropout
            if key not in found["runs"]:
                lr = rate(a, base, steps, name)  # the rate searched with the option, else its method's
                report = run_method(base, a, steps, lr, a.workdir, ablation=name)
                found["runs"][key] = {
                    "option": name, "method": base, "settings": settings, "steps": steps, "learning_rate": lr,
                    "validation": report["validation"]["student"], "heldout": report["heldout"]["student"],
                    "train_seconds": report["training"]["seconds"], "hard_masks": report.get("hard_masks"),
                    "train_dropout": report["wid_config"].get("train_dropout"), "seed": a.seed,
                    "mlm_probability": report["training"].get("mlm_probability")}
            # the method's own run: the committed one, or (--without-from) one from the same machine, where WID's
            # trajectory is not moved by another CPU's rounding
            reference = _load(source, {"methods": {}})["methods"].get(base, {})
            found["runs"][key]["without"] = {k: reference.get(k)
                                             for k in ("validation", "heldout", "train_seconds", "hard_masks")}
            if a.without_from:
                found["runs"][key]["without_from"] = source
            print(key, json.dumps({k: found["runs"][key][k] for k in ("validation", "without")}), flush=True)
            _save(path, found)
    rows = ["| option | steps | validation acc (loss) with | without | held-out acc with | without | train s with | "
            "without |", "|---|---|---|---|---|---|---|---|"]

    def acc(split, r):
        return "-" if not r.get(split) else f"{r[split]['mlm_accuracy']:.3f} ({r[split]['mlm_loss']:.3f})"

    for w in found["runs"].values():
        o = w["without"]
        rows.append(f"| {w['method']} + {w['option'].split('/')[0]} | {w['steps']} | {acc('validation', w)} | "
                    f"{acc('validation', o)} | {acc('heldout', w)} | {acc('heldout', o)} | {w['train_seconds']:.0f} | "
                    + ("-" if o.get("train_seconds") is None else f"{o['train_seconds']:.0f}") + " |")
    with open(os.path.join(a.out, "ablations.md"), "w") as f:
        notes = "".join(f"Note: {n}\n\n" for n in found.get("notes", []))
        f.write("Options measured against the method as benchmarked (same teacher, corpus, seed, steps and learning "
                "rate; decided on the validation split).\n\n" + notes + "\n".join(rows) + "\n")


def run_budget(a, steps):
    from wid_hf.finetune import finetune_eval

    path = os.path.join(a.out, f"quality-{steps}.json")
    check_dropout(path, a)
    results = _load(path, {"methods": {}})
    # the setup of this invocation; its method list keeps the methods earlier invocations added to the file, and
    # an invocation that fine-tunes nothing keeps the fine-tuning settings of the rows that were fine-tuned
    earlier = results.get("setup", {})
    setup = {**{k: v for k, v in vars(a).items() if k not in ("out", "steps")}, "steps": steps,
             "methods": list(dict.fromkeys([*earlier.get("methods", []), *a.methods]))}
    if not a.finetune_tasks and earlier.get("finetune_tasks"):
        setup.update({k: v for k, v in earlier.items() if k.startswith("finetune_")})
    results.update({"setup": setup,
                    "torch": torch.__version__,
                    "device": "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"})

    def finetune(model_dir):
        scores = {}
        for task in a.finetune_tasks:
            if task == "polarity" and not a.polarity_csv:
                continue
            scores[task] = finetune_eval(model_dir, task, task_file=a.polarity_csv if task == "polarity" else None,
                                         seeds=a.finetune_seeds, epochs=a.finetune_epochs,
                                         max_train=a.finetune_max_train, seq_len=a.seq_len)
        return scores

    def entry(side, report, lr):
        sizes = report[side]
        return {"train_seconds": report["training"]["seconds"] if side == "student" else 0.0,
                "learning_rate": lr, "parameters": sizes["parameters" if side == "student" else "parameters_tied"],
                "config": {k: sizes[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                 "num_attention_heads")},
                "heldout": report["heldout"][side], "validation": report.get("validation", {}).get(side),
                "hard_masks": report.get("hard_masks") if side == "student" else None,
                "mlm_probability": report["training"].get("mlm_probability") if side == "student" else None,
                "finetune": finetune(sizes["path"] if side == "student" else a.teacher)}

    for name in a.methods:
        if name in results["methods"]:
            continue  # finished in an earlier run
        lr = rate(a, name, steps)
        report = run_method(name, a, steps, lr, a.workdir)
        results["vocab_size"] = report["teacher"].get("vocab_size", 30522)
        if "teacher" not in results["methods"]:
            results["methods"] = {"teacher": entry("teacher", report, None), **results["methods"]}
        results["methods"][name] = entry("student", report, lr)
        shown = results["methods"][name]
        print(steps, name, json.dumps({k: shown[k] for k in ("train_seconds", "learning_rate", "heldout")}), flush=True)
        _save(path, results)
    write_table_and_chart(results, a.out, steps)


def write_table_and_chart(results, out, steps):
    from transformers import BertConfig

    from wid_hf.utils import bert_mlm_parameter_count

    # fine-tuning tasks that some method has results for: no empty columns or panels
    tasks = [t for t in ("bbc-topics", "polarity") if any(t in e["finetune"] for e in results["methods"].values())]
    rows = ["| method | params (decoder tied) | lr | train s | validation MLM acc | held-out MLM loss | "
            "held-out MLM acc |" + "".join(f" {TASK_TITLES[t]} acc |" for t in tasks),
            "|---|---|---|---|---|---|---|" + "---|" * len(tasks)]
    vocab = results.get("vocab_size", 30522)
    for name, e in results["methods"].items():
        ft = e["finetune"]
        cell = lambda t: f"{ft[t]['mean']:.3f} ± {ft[t]['std']:.3f}" if t in ft else "-"  # noqa: E731
        # comparable sizes: every model counted with its MLM decoder tied to the word embeddings
        tied = bert_mlm_parameter_count(BertConfig(vocab_size=vocab, **e["config"]), include_decoder=False)
        val = f"{e['validation']['mlm_accuracy']:.3f}" if e.get("validation") else "-"
        lr = f"{e['learning_rate']:g}" if e.get("learning_rate") else "-"
        rows.append(f"| {name} | {tied / 1e6:.1f}M | {lr} | {e['train_seconds']:.0f} | {val} | "
                    f"{e['heldout']['mlm_loss']:.3f} | "
                    f"{e['heldout']['mlm_accuracy']:.3f} |" + "".join(f" {cell(t)} |" for t in tasks))
    s = results["setup"]
    head = (f"Teacher {s['teacher']}; every method: {s['steps']} optimizer steps of {s['batch']}x{s['seq_len']} on the "
            f"offline Wikipedia leads, seed {s['seed']}, targets hidden {s['hidden']} / FFN {s['ffn']}; {results['device']}, "
            f"torch {results['torch']}. "
            + (f"Fine-tuning: {s['finetune_epochs']:g} epochs on at most {s['finetune_max_train']} examples, seeds "
               f"{s['finetune_seeds']} (mean ± std)." if tasks else "No fine-tuning in this run.")
            + (f" Learning rates (lr) from {os.path.basename(s['lr_from'])} where it covered the method"
               if s.get("lr_from") else " Learning rates (lr) from the search at these steps (lr_search-<steps>.json) "
               "where one covered the method, else at 120 steps (lr_search-120.json)")
            + "; validation = the last sequences of the training corpus (held back), held-out = BBC News."
            + f" Dropout while training: {dropout_words(s.get('train_dropout', DROPOUT_BEFORE))}.")
    hard = ["| WID run | hard-mask step | pruned norm just before | logged loss before → after |", "|---|---|---|---|"]
    num = lambda v, d: "-" if v is None else f"{v:.{d}f}"  # noqa: E731 (absent where nothing was logged)
    for name, e in results["methods"].items():
        h = e.get("hard_masks")
        if h:
            hard.append(f"| {name} | {h['step']} | {num(h['pruned_norm_before'], 3)} | {num(h['loss_before'], 2)} "
                        f"(step {h['loss_before_step']}) → {num(h['loss_after'], 2)} (step {h['loss_after_step']}) |")
    notes = "".join(f"\n\nNote: {n}" for n in results.get("notes", []))  # reruns and caveats, kept with the data
    with open(os.path.join(out, f"quality-{steps}.md"), "w") as f:
        f.write(head + notes + "\n\n" + "\n".join(rows) + "\n")
        if len(hard) > 2:
            f.write("\nEvery WID run at its hard-mask step (a large pruned norm or loss jump means hard masking was a "
                    "cliff):\n\n" + "\n".join(hard) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["methods"])
    fig, axes = plt.subplots(1, 1 + len(tasks), figsize=(5 * (1 + len(tasks)), 4.5), squeeze=False)
    panels = [("held-out MLM accuracy", lambda e: (e["heldout"]["mlm_accuracy"], 0.0))]
    for task in tasks:
        panels.append((f"{TASK_TITLES[task]} accuracy (fine-tuned)",
                       lambda e, t=task: (e["finetune"][t]["mean"], e["finetune"][t]["std"])
                       if t in e["finetune"] else (0.0, 0.0)))
    for ax, (title, get) in zip(axes[0], panels):
        values = [get(results["methods"][n]) for n in names]
        ax.barh(names, [v[0] for v in values], xerr=[v[1] for v in values],
                color=["grey" if n == "teacher" else "tab:blue" if n.startswith("wid") else "tab:orange" for n in names])
        ax.invert_yaxis()
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(os.path.join(out, f"quality-{steps}.png"), dpi=110)
    plt.close(fig)


def sweep_chart(out):
    """budget_sweep.{md,png}: held-out MLM accuracy against steps and against training wall time, per method."""
    import glob

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = {}
    for path in glob.glob(os.path.join(out, "quality-*.json")):
        data = _load(path, {})
        budgets[data["setup"]["steps"]] = data["methods"]
    series = {}
    for steps in sorted(budgets):
        for name, e in budgets[steps].items():
            series.setdefault(name, []).append((steps, e["train_seconds"], e["heldout"]["mlm_accuracy"]))
    rows = ["| method | " + " | ".join(f"{s} steps: acc (train s)" for s in sorted(budgets)) + " |",
            "|---|" + "---|" * len(budgets)]
    for name, points in series.items():
        cells = {s: f"{acc:.3f} ({sec:.0f})" for s, sec, acc in points}
        rows.append(f"| {name} | " + " | ".join(cells.get(s, "-") for s in sorted(budgets)) + " |")
    with open(os.path.join(out, "budget_sweep.md"), "w") as f:
        f.write("Held-out masked-LM accuracy (BBC News) by training budget; training seconds in brackets.\n\n"
                + "\n".join(rows) + "\n")
    fig, (ax_s, ax_t) = plt.subplots(1, 2, figsize=(13, 4.2))
    for i, (name, points) in enumerate(series.items()):
        if name == "teacher":
            for ax in (ax_s, ax_t):
                ax.axhline(points[0][2], color="grey", linestyle=":", label="teacher")
            continue
        steps, seconds, acc = zip(*points)
        marker = "os^"[(i - 1) // 10 % 3]  # matplotlib's 10 colours repeat: the 11th method on gets another marker
        ax_s.plot(steps, acc, marker=marker, label=name)
        ax_t.plot(seconds, acc, marker=marker, label=name)
    ax_s.set(xscale="log", xlabel="optimizer steps (8 x 128)", ylabel="held-out MLM accuracy", title="Equal steps")
    ax_s.set_xticks(sorted(budgets), [str(s) for s in sorted(budgets)])  # the budgets themselves, not 10^k ticks
    ax_s.minorticks_off()
    ax_t.set(xscale="log", xlabel="training wall time, s (2 CPU cores)", title="Equal wall time")
    ax_t.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))  # beside the plots, not on the data
    fig.tight_layout()
    fig.savefig(os.path.join(out, "budget_sweep.png"), dpi=110)
    plt.close(fig)


def _mean_std(values):
    """Mean and sample standard deviation (0 for a single value) of runs over seeds."""
    import statistics

    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _recorded(path):
    """Where a path recorded in a results file (as given: from the working directory, usually the repository root)
    is found here: the files among the two readings that exist."""
    return [c for c in (path, os.path.join(ROOT, path)) if path and os.path.isfile(c)]


def _ablation_rows(path, setup):
    """The ablations measured against the results file `path` (of this `setup`; its folder's ablations.json, rows at
    its steps whose --without-from is that file), as rows named '<method> <option>' with the dropout each trained at."""
    runs = _load(os.path.join(os.path.dirname(path) or ".", "ablations.json"), {}).get("runs", {})

    def against(run):
        return any(os.path.samefile(c, path) for c in _recorded(run.get("without_from") or ""))

    return {f"{r['method']} {r['option']}": {**r, "train_dropout": r.get("train_dropout", method_dropout(
        setup, r["method"]))} for r in runs.values() if r["steps"] == setup["steps"] and against(r)}


def seeds_table(out, paths):
    """seeds-<steps>.{json,md}: the same budget run with several --seed values (one quality-<steps>.json each, e.g.
    from `--seed 1 --out DIR`), masked-LM accuracy as mean ± std over the seeds and per seed, for every method that
    every run holds, but the teacher, and every ablation (`--ablation`, '<method> <option>') measured against each of
    these files. `out` is a folder (the files go inside it) or a file stem (`out`.json / `out`.md)."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if not paths or missing:
        raise SystemExit(f"--seeds-table OUT FILE...: give one quality-<steps>.json per seed; not found: {missing}")
    runs = [_load(p, {}) for p in paths]
    steps = {r["setup"]["steps"] for r in runs}
    if len(steps) != 1:
        raise SystemExit(f"--seeds-table needs runs of one budget, got steps {sorted(steps)}")
    steps = steps.pop()
    stem = os.path.join(out, f"seeds-{steps}") if os.path.isdir(out) else out
    ablations = [_ablation_rows(p, r["setup"]) for p, r in zip(paths, runs)]
    rows_of = [{**r["methods"], **a} for r, a in zip(runs, ablations)]
    methods = [name for name in rows_of[0] if name != "teacher" and all(name in rows for rows in rows_of)]
    dropout = {}
    for name in methods:  # seeds of one method at two dropouts would read as the spread over seeds
        values = {a[name]["train_dropout"] if name in a else method_dropout(r["setup"], name)
                  for r, a in zip(runs, ablations)}
        if len(values) != 1:
            said = " and ".join(f"{v:g}" for v in sorted(values))
            raise SystemExit(f"--seeds-table: {name} trained with dropout {said} in these runs; a seeds table takes "
                             "runs at one dropout (benchmarks/quality.py --train-dropout)")
        dropout[name] = values.pop()
    table = {"steps": steps, "files": list(paths), "train_dropout": dropout, "methods": {}}
    for name in methods:
        table["methods"][name] = {str(r["setup"]["seed"]): {k: rows[name][k] for k in
                                                            ("validation", "heldout", "train_seconds")}
                                  for r, rows in zip(runs, rows_of)}
    _write_seeds_table(stem, table)


def _base_method(label):
    """The method of a run label ('<method>' or '<method>+<option>', run_label)."""
    return max((name for name in RUNS if label == name or label.startswith(name + "+")), key=len, default=label)


def _record(spec):
    """One run recorded by an ablation (ablations.json) or a learning-rate search (lr_search-<steps>.json), given as
    'FILE:KEY': its steps, seed, dropout, the results file it was compared with (None for a search) and its numbers."""
    path, _, key = spec.rpartition(":")
    data = _load(path, None) if path else None
    if data is None or key not in data.get("runs", {}):
        raise SystemExit(f"--records-table: {spec!r}: give FILE:KEY, a key of the \"runs\" of an ablations.json or "
                         f"lr_search-<steps>.json" + (f"; {path} holds {', '.join(data.get('runs', {})) or 'no runs'}" if data else ""))
    run = data["runs"][key]
    if "option" in run:  # an ablation's record
        if "seed" not in run:
            raise SystemExit(f"--records-table: {spec} does not record its seed (written before 2026-12-07); add "
                             "\"seed\" to the record from its notes")
        steps, seed, dropout = run["steps"], run["seed"], run["train_dropout"]
    else:  # a search's: the search's setup holds what its runs share
        setup = data["setup"]
        steps, seed = setup["steps"][0], setup["seed"]
        dropout = method_dropout(setup, _base_method(run["method"]))
    return {"steps": steps, "seed": seed, "train_dropout": dropout, "file": run.get("without_from"),
            **{k: run[k] for k in ("validation", "heldout", "train_seconds")}}


def records_table(out, args):
    """`out`.{json,md}: a seeds table, as --seeds-table writes it (for --seeds-sweep-chart), from single recorded
    runs, e.g. each method at the masking and learning rates its searches chose. Each argument is
    'NAME=FILE:KEY[,FILE:KEY...]': the method's name in the table and its runs, one per seed, all of one budget;
    FILE is an ablations.json or an lr_search-<steps>.json, KEY a key of its "runs" ('mlm-0.3@600',
    'wid-budget+mlm-0.3@0.001')."""
    if not args:
        raise SystemExit("--records-table OUT NAME=FILE:KEY[,FILE:KEY...]...: name at least one method and its runs")
    table = {"files": [], "train_dropout": {}, "methods": {}, "runs": {}}
    for arg in args:
        name, _, specs = arg.partition("=")
        if not name or not specs:
            raise SystemExit(f"--records-table OUT NAME=FILE:KEY[,FILE:KEY...]...: {arg!r} names no runs")
        if name in table["methods"]:
            raise SystemExit(f"--records-table: {name} is named twice; give all its runs in one argument")
        specs = specs.split(",")
        runs = [_record(spec) for spec in specs]
        seeds = [r["seed"] for r in runs]
        if len(set(seeds)) != len(seeds):
            raise SystemExit(f"--records-table: {name} has two runs of one seed ({seeds}); give one run per seed")
        dropouts = {r["train_dropout"] for r in runs}
        if len(dropouts) != 1:  # as in a seeds table: two dropouts would read as the spread over seeds
            raise SystemExit(f"--records-table: {name}'s runs trained with dropout "
                             f"{' and '.join(f'{p:g}' for p in sorted(dropouts))}; give runs at one dropout")
        table["train_dropout"][name] = dropouts.pop()
        table["runs"][name] = specs
        table["methods"][name] = {str(r["seed"]): {k: r[k] for k in ("validation", "heldout", "train_seconds")}
                                  for r in runs}
        table["files"] += [r["file"] for r in runs if r["file"] and r["file"] not in table["files"]]
        table.setdefault("steps", runs[0]["steps"])
        if any(r["steps"] != table["steps"] for r in runs):
            raise SystemExit(f"--records-table needs runs of one budget, got steps "
                             f"{sorted({r['steps'] for r in runs} | {table['steps']})}")
    _write_seeds_table(out, table)


def _write_seeds_table(stem, table):
    """A seeds table's `stem`.json and `stem`.md."""
    _save(stem + ".json", table)
    steps, dropout = table["steps"], table["train_dropout"]

    def spread(values, digits=3):
        mean, std = _mean_std(values)
        return f"{mean:.{digits}f} ± {std:.{digits}f}"

    rows = ["| method | validation acc | validation loss | held-out acc | held-out per seed | train s per seed |",
            "|---|---|---|---|---|---|"]
    for name, by_seed in table["methods"].items():
        seeds = sorted(by_seed, key=int)
        val = [by_seed[s]["validation"]["mlm_accuracy"] for s in seeds]
        loss = [by_seed[s]["validation"]["mlm_loss"] for s in seeds]
        held = [by_seed[s]["heldout"]["mlm_accuracy"] for s in seeds]
        rows.append(f"| {name} | {spread(val)} | {spread(loss, 2)} | {spread(held)} | "
                    + " / ".join(f"{h:.3f}" for h in held) + " | "
                    + " / ".join(f"{by_seed[s]['train_seconds']:.0f}" for s in seeds) + " |")
    with open(stem + ".md", "w") as f:
        seeds = sorted({s for by_seed in table["methods"].values() for s in by_seed}, key=int)
        f.write(f"Masked-LM accuracy at {steps} steps over training seeds {', '.join(seeds)} (mean ± std, then per "
                "seed in that order; --seed changes the training order and any random initialisation). "
                + dropout_line(dropout)
                + "".join(f" {name}: {', '.join(specs)}." for name, specs in table.get("runs", {}).items())
                + "\n\n" + "\n".join(rows) + "\n")


def _chart_table(arg):
    """A `--seeds-sweep-chart` argument, 'FILE' or 'FILE:OLD=NEW[,OLD=NEW...]': the seeds table's path and the
    methods to draw under another name (e.g. a run that is, at this budget, what another table's row measured)."""
    if os.path.isfile(arg) or ":" not in arg:
        return arg, {}
    path, _, renames = arg.rpartition(":")
    pairs = [r.split("=", 1) for r in renames.split(",")]
    if not all(len(p) == 2 and all(p) for p in pairs):
        raise SystemExit(f"--seeds-sweep-chart: {arg!r}: give FILE or FILE:OLD=NEW[,OLD=NEW...]")
    return path, dict(pairs)


def _teacher_of(table):
    """The teacher's row of the results files a seeds table was made from, or None where none of them is here."""
    for path in table.get("files", []):
        for candidate in _recorded(path):
            teacher = _load(candidate, {}).get("methods", {}).get("teacher")
            if teacher:
                return teacher
    return None


def seeds_sweep_chart(out, args, share=0.85):
    """`out`.{md,png}: the budget sweep over training seeds, from seeds tables (`--seeds-table`, one per budget):
    mean ± std of held-out and validation masked-LM accuracy against steps, and held-out against mean wall time, for
    every method the tables hold (a method missing from a budget has no point there). An argument 'FILE:OLD=NEW' draws
    that table's method OLD as NEW (said in `out`.md). Where the tables' results files are at hand, the teacher's
    validation accuracy and `share` of its held-out accuracy are drawn as lines (the issue's target: 85%)."""
    import statistics

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    given = [_chart_table(a) for a in args]
    paths = [p for p, _ in given]
    missing = [p for p in paths if not os.path.isfile(p)]
    if not paths or missing:
        raise SystemExit(f"--seeds-sweep-chart OUT FILE...: give one seeds table (--seeds-table) per budget; not found: "
                         f"{missing}")
    tables = sorted(({**_load(p, {}), "renames": r, "path": p} for p, r in given), key=lambda t: t["steps"])
    budgets = [t["steps"] for t in tables]
    if len(set(budgets)) != len(budgets):
        raise SystemExit(f"--seeds-sweep-chart needs one seeds table per budget, got steps {budgets}")
    for t in tables:
        unknown = sorted(set(t["renames"]) - set(t["methods"]))
        if unknown:
            raise SystemExit(f"--seeds-sweep-chart: {t['path']} has no method {', '.join(unknown)} to draw under "
                             f"another name; it holds {', '.join(t['methods'])}")
        drawn = [t["renames"].get(own, own) for own in t["methods"]]
        twice = sorted({name for name in drawn if drawn.count(name) > 1})
        if twice:  # one budget, two points on one line
            raise SystemExit(f"--seeds-sweep-chart: {t['path']} would draw two of its methods as {', '.join(twice)}; "
                             "draw each line once per budget")
    teachers = [teacher for teacher in map(_teacher_of, tables) if teacher]
    if any(teacher != teachers[0] for teacher in teachers):  # one line through runs of two teachers compares nothing
        raise SystemExit("--seeds-sweep-chart: these tables' results files hold different teachers; chart one at a "
                         "time")
    teacher = teachers[0] if teachers else None

    series, dropout = {}, {}  # method -> [(steps, seeds, held-out (mean, std), validation (mean, std), mean train s)]
    for t in tables:
        for own, by_seed in t["methods"].items():
            name = t["renames"].get(own, own)
            p = t.get("train_dropout", {}).get(own, DROPOUT_BEFORE)  # tables from before: the teacher's 0.1
            if dropout.setdefault(name, p) != p:  # one line through two settings would read as a trend
                raise SystemExit(f"--seeds-sweep-chart: {name} trained with dropout {dropout[name]:g} in one table and "
                                 f"{p:g} in another; give tables at one dropout")
            runs = [by_seed[s] for s in sorted(by_seed, key=int)]
            series.setdefault(name, []).append((
                t["steps"], len(runs), _mean_std([r["heldout"]["mlm_accuracy"] for r in runs]),
                _mean_std([r["validation"]["mlm_accuracy"] for r in runs]),
                statistics.mean(r["train_seconds"] for r in runs)))
    rows = ["| method | " + " | ".join(f"{s} steps: held-out / validation (train s)" for s in budgets) + " |",
            "|---|" + "---|" * len(budgets)]
    for name, points in series.items():
        cells = {s: f"{h[0]:.3f} ± {h[1]:.3f} / {v[0]:.3f} ± {v[1]:.3f} ({sec:.0f}; {n} seeds)"
                 for s, n, h, v, sec in points}
        rows.append(f"| {name} | " + " | ".join(cells.get(s, "-") for s in budgets) + " |")
    with open(out + ".md", "w") as f:
        f.write("Masked-LM accuracy by training budget over training seeds (mean ± std): held-out (BBC News, decides "
                "nothing) / validation (held back from the training corpus, decides); mean training seconds and the "
                "number of seeds in brackets. " + dropout_line(dropout) + " From: "
                + ", ".join(os.path.basename(t["path"]) + "".join(f" (its {a} drawn as {b})" for a, b in
                                                                   t["renames"].items()) for t in tables) + "."
                + (f" Teacher: held-out {teacher['heldout']['mlm_accuracy']:.3f} ({share:.0%}: "
                   f"{share * teacher['heldout']['mlm_accuracy']:.3f}), validation "
                   f"{teacher['validation']['mlm_accuracy']:.3f}." if teacher else "")
                + "\n\n" + "\n".join(rows) + "\n")
    fig, (ax_v, ax_s, ax_t) = plt.subplots(1, 3, figsize=(16, 4.2))
    for name, points in series.items():
        steps, _, held, val, seconds = zip(*points)
        line = ax_s.errorbar(steps, [h[0] for h in held], yerr=[h[1] for h in held], marker="o", capsize=3,
                             label=name)
        color = line[0].get_color()
        ax_v.errorbar(steps, [v[0] for v in val], yerr=[v[1] for v in val], marker="o", capsize=3, color=color)
        ax_t.errorbar(seconds, [h[0] for h in held], yerr=[h[1] for h in held], marker="o", capsize=3, color=color)
    if teacher:
        mark = share * teacher["heldout"]["mlm_accuracy"]
        for ax in (ax_s, ax_t):
            ax.axhline(mark, color="grey", linestyle="--", linewidth=1,
                       label=f"{share:.0%} of the teacher ({mark:.3f})")
        ax_v.axhline(teacher["validation"]["mlm_accuracy"], color="grey", linestyle=":", linewidth=1,
                     label=f"teacher ({teacher['validation']['mlm_accuracy']:.3f})")
        ax_v.legend(fontsize="small", loc="upper left")
    for ax, title in ((ax_v, "Validation (training domain), equal steps"), (ax_s, "Held-out (BBC News), equal steps")):
        ax.set(xscale="log", xlabel="optimizer steps (8 x 128)", ylabel="MLM accuracy", title=title)
        ax.set_xticks(budgets, [str(s) for s in budgets])
        ax.minorticks_off()
    ax_t.set(xscale="log", xlabel="mean training wall time, s (2 CPU cores)", title="Held-out, equal wall time")
    ax_t.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 2, 5)))  # 50, 100, 200, ... in plain numbers
    ax_t.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax_t.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax_s.legend(fontsize="small", loc="lower right")  # the lines rise to the upper right
    fig.suptitle(dropout_line(dropout).rstrip("."), fontsize="medium")
    fig.tight_layout()
    fig.savefig(out + ".png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--sweep-chart"]:  # budget_sweep.{md,png} from the quality-<steps>.json files
        sweep_chart(sys.argv[2] if len(sys.argv) > 2 else os.path.join(HERE, "results"))
    elif sys.argv[1:2] == ["--seeds-table"]:  # --seeds-table OUT quality-<steps>.json [...]: one per seed
        seeds_table(sys.argv[2], sys.argv[3:])
    elif sys.argv[1:2] == ["--records-table"]:  # --records-table OUT NAME=FILE:KEY[,FILE:KEY...] [...]
        records_table(sys.argv[2], sys.argv[3:])
    elif sys.argv[1:2] == ["--seeds-sweep-chart"]:  # --seeds-sweep-chart OUT seeds-<steps>.json [...]: one per budget
        seeds_sweep_chart(sys.argv[2], sys.argv[3:])
    else:
        main()
