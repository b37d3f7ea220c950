"""Quality of WID against the baselines of the literature at equal compute, on one teacher, corpus and seed.

Every method gets the same teacher (default: ../shared/teachers/minilm-l6-h384-mlm, or one rebuilt with
`wid-hf prepare-teacher`), the same training text (offline Wikipedia leads packed into sequences of --seq-len), the same
batch size, number of optimizer steps and seed, and targets hidden 192 / FFN 768 (half width, same layers):

  wid                WID (compactors, masked-LM only)
  wid+attention      WID plus MiniLM-style attention transfer (KL on attention distributions, last layer)
  etd-impt+mlm       Extract-Then-Distill, first-order importance on 16 corpus batches, then masked-LM
  etd-rand+mlm       Extract-Then-Distill with random indices, then masked-LM
  etd-impt+attention ETD-Impt, then attention transfer (+ masked-LM, alpha 0.5)
  truncation         the teacher's lower layers at full width (as many as fit the student's encoder budget) + MLM
  weight-distill     Weight Distillation: generator for half the steps, then the materialised student
  random+mlm         random initialisation at the student's shape + masked-LM (the floor)

Measured: held-out masked-LM loss/accuracy on BBC News (not seen in training; fixed masks), fine-tuned accuracy on
the Pang & Lee polarity sentences and BBC topics (fixed 80/20 splits, several seeds, mean ± std), parameters and
wall time. Writes benchmarks/results/quality.{json,md,png}. Run it in the background; it takes a while:

    nohup python benchmarks/quality.py --steps 120 > runs/quality.log 2>&1 &
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
METHODS = ["wid", "wid+attention", "etd-impt+mlm", "etd-rand+mlm", "etd-impt+attention", "truncation",
           "weight-distill", "random+mlm"]


# benchmark name -> (method, objective) of the pipeline (wid_hf.pipeline.Job)
RUNS = {"wid": ("wid", "mlm"), "wid+attention": ("wid", "attention_kl"), "etd-impt+mlm": ("etd-impt", "mlm"),
        "etd-rand+mlm": ("etd-rand", "mlm"), "etd-impt+attention": ("etd-impt", "attention_kl"),
        "truncation": ("truncation", "mlm"), "weight-distill": ("weight-distill", "mlm"), "random+mlm": ("random", "mlm")}


def run_method(name, a):
    """One method through the same pipeline as `wid-hf compress` / `wid-hf baseline` (resumes; a finished run
    returns its report). WID gets the budget schedule of `wid_hf.pipeline.budget_schedule`."""
    from wid_hf.pipeline import Job, run

    method, objective = RUNS[name]
    job = Job.create(output_dir=os.path.join(a.workdir, name.replace("+", "_")), method=method, objective=objective,
                     teacher=a.teacher, corpus="offline-wiki", eval_corpus="offline-bbc", max_seq_length=a.seq_len,
                     eval_sequences=a.eval_sequences, cache_dir=os.path.join(a.workdir, "cache"), max_steps=a.steps,
                     per_device_train_batch_size=a.batch, seed=a.seed, target_hidden_size=a.hidden,
                     target_intermediate_size=a.ffn, learning_rate=a.lr if method == "wid" else a.lr_student,
                     compactor_learning_rate=a.compactor_lr, save_steps=a.save_steps, disable_tqdm=True)
    return run(job)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default=SHARED_TEACHER)
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--hidden", type=int, default=192)
    p.add_argument("--ffn", type=int, default=768)
    p.add_argument("--lr", type=float, default=1e-4, help="WID: inherited weights")
    p.add_argument("--compactor-lr", type=float, default=2e-3, help="WID compactors; WD generator")
    p.add_argument("--lr-student", type=float, default=5e-4, help="every plain student (ETD, truncation, random, WD)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-steps", type=int, default=50, help="checkpoint interval (each run resumes)")
    p.add_argument("--finetune-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--finetune-max-train", type=int, default=800)
    p.add_argument("--eval-sequences", type=int, default=256)
    p.add_argument("--polarity-csv", default=os.environ.get("WID_HF_TEST_CORPORA") and os.path.join(
        os.environ["WID_HF_TEST_CORPORA"], "polarity-en-pang&lee2.csv"))
    p.add_argument("--workdir", default=os.path.join(ROOT, "runs", "quality"))
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    a = p.parse_args()

    from wid_hf.finetune import finetune_eval

    results = {"setup": {k: v for k, v in vars(a).items() if k not in ("out",)}, "torch": torch.__version__,
               "device": "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)",
               "methods": {}}
    os.makedirs(a.out, exist_ok=True)

    def finetune(model_dir):
        scores = {}
        tasks = [("bbc-topics", None)] + ([("polarity", a.polarity_csv)] if a.polarity_csv else [])
        for task, path in tasks:
            scores[task] = finetune_eval(model_dir, task, task_file=path, seeds=a.finetune_seeds, epochs=1.0,
                                         max_train=a.finetune_max_train, seq_len=a.seq_len)
        return scores

    def entry(side, report, train_seconds):
        sizes = report[side]
        return {"train_seconds": train_seconds,
                "parameters": sizes["parameters" if side == "student" else "parameters_tied"],
                "config": {k: sizes[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                 "num_attention_heads")},
                "heldout": report["heldout"][side], "finetune": finetune(sizes["path"] if side == "student"
                                                                         else a.teacher)}

    for name in a.methods:
        report = run_method(name, a)
        results["vocab_size"] = report["teacher"].get("vocab_size", 30522)
        if "teacher" not in results["methods"]:
            results["methods"]["teacher"] = entry("teacher", report, 0.0)
        results["methods"][name] = entry("student", report, report["training"]["seconds"])
        shown = results["methods"][name]
        print(name, json.dumps({k: shown[k] for k in ("train_seconds", "parameters", "heldout")}), flush=True)
        with open(os.path.join(a.out, "quality.json"), "w") as f:
            json.dump(results, f, indent=2)
    write_table_and_chart(results, a.out)


def write_table_and_chart(results, out):
    from transformers import BertConfig

    from wid_hf.utils import bert_mlm_parameter_count

    rows = ["| method | params (decoder tied) | params as saved | train s | held-out MLM loss | held-out MLM acc | "
            "BBC topics acc | polarity acc |", "|---|---|---|---|---|---|---|---|"]
    vocab = results.get("vocab_size", 30522)
    for name, e in results["methods"].items():
        ft = e["finetune"]
        cell = lambda t: f"{ft[t]['mean']:.3f} ± {ft[t]['std']:.3f}" if t in ft else "-"  # noqa: E731
        # comparable sizes: every model counted with its MLM decoder tied to the word embeddings
        tied = bert_mlm_parameter_count(BertConfig(vocab_size=vocab, **e["config"]), include_decoder=False)
        rows.append(f"| {name} | {tied / 1e6:.1f}M | {e['parameters'] / 1e6:.1f}M | {e['train_seconds']:.0f} | "
                    f"{e['heldout']['mlm_loss']:.3f} | "
                    f"{e['heldout']['mlm_accuracy']:.3f} | {cell('bbc-topics')} | {cell('polarity')} |")
    s = results["setup"]
    head = (f"Teacher {s['teacher']}; every method: {s['steps']} optimizer steps of {s['batch']}x{s['seq_len']} on the "
            f"offline Wikipedia leads, seed {s['seed']}, targets hidden {s['hidden']} / FFN {s['ffn']}; {results['device']}, "
            f"torch {results['torch']}. Fine-tuning: 1 epoch on at most {s['finetune_max_train']} examples, seeds "
            f"{s['finetune_seeds']} (mean ± std); metric source: "
            f"{next(iter(next(iter(results['methods'].values()))['finetune'].values()))['metric_source']}.")
    with open(os.path.join(out, "quality.md"), "w") as f:
        f.write(head + "\n\n" + "\n".join(rows) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["methods"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    panels = [("held-out MLM accuracy", lambda e: (e["heldout"]["mlm_accuracy"], 0.0))]
    for task in ("bbc-topics", "polarity"):
        panels.append((f"{task} accuracy", lambda e, t=task: (e["finetune"][t]["mean"], e["finetune"][t]["std"])
                       if t in e["finetune"] else (0.0, 0.0)))
    for ax, (title, get) in zip(axes, panels):
        values = [get(results["methods"][n]) for n in names]
        ax.barh(names, [v[0] for v in values], xerr=[v[1] for v in values],
                color=["grey" if n == "teacher" else "tab:blue" if n.startswith("wid") else "tab:orange" for n in names])
        ax.invert_yaxis()
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "quality.png"), dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--table-only"]:  # re-render quality.md/png from an existing quality.json
        with open(os.path.join(HERE, "results", "quality.json")) as f:
            write_table_and_chart(json.load(f), os.path.join(HERE, "results"))
    else:
        main()
