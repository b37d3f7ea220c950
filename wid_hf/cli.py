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
import dataclasses
import json
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Optional

from . import __version__


class UsageError(Exception):
    """An input problem the user can fix; printed as one line."""


# ---------------------------------------------------------------------------------------------- dataclass commands
@dataclass
class HubArguments:
    """Where and how to push (Hugging Face Hub)."""

    _argument_group_name = "Hub"
    private: bool = field(default=False, metadata={"help": "Create the Hub repo as private."})
    hub_revision: Optional[str] = field(default=None, metadata={"help": "Branch to push to (created if missing)."})
    create_pr: bool = field(default=False, metadata={"help": "Open a pull request instead of pushing to the branch."})
    token: Optional[str] = field(default=None, metadata={"help": "Hub token (default: the logged-in one, or HF_TOKEN)."})


@dataclass
class CommandArguments:
    """What the command does after the job."""

    _argument_group_name = "command"
    push_to_hub: Optional[str] = field(default=None, metadata={
        "metavar": "REPO", "help": "After the job, push the student and its model card to this Hub repo."})
    debug: bool = field(default=False, metadata={"help": "Show full tracebacks instead of one-line errors."})


@dataclass
class PushArguments:
    """What to push."""

    _argument_group_name = "push"
    student: str = field(metadata={"help": "Student folder (e.g. runs/demo/student)."})
    repo: str = field(metadata={"help": "Hub repo id, e.g. me/bert-wid55."})
    report: Optional[str] = field(default=None, metadata={
        "help": "report.json of the job (default: next to the student folder, if there)."})
    debug: bool = field(default=False, metadata={"help": "Show full tracebacks instead of one-line errors."})


def _job_classes():
    from .pipeline import ARGUMENT_CLASSES

    return (*ARGUMENT_CLASSES, HubArguments, CommandArguments)


DATACLASS_COMMANDS = {
    "compress": (_job_classes, "Train a student from a teacher and merge it (the whole job, resumable).",
                 "Teacher -> WID training (or a baseline, --method) -> merged student -> teacher-vs-student report. "
                 "Running the same command again in the same --output_dir resumes from the last checkpoint. Every "
                 "flag is the name of a field of wid_hf.pipeline's dataclasses or of WIDConfig (underscores or dashes)."),
    "baseline": (_job_classes, "Train a student by a baseline method (ETD, KD, Weight Distillation, ...).",
                 "`compress` with a required --method: the methods WID is compared with, on the same pipeline: "
                 "ETD-Impt / ETD-Rand extraction, teacher-layer truncation, random initialisation or Weight "
                 "Distillation, then masked-LM or a KD objective (--objective)."),
    "push": (lambda: (PushArguments, HubArguments), "Push a student (weights, tokenizer, model card) to the Hub.",
             "Push a saved student folder with a model card built from its compress report. A failed push leaves "
             "the folder as it is and says what to do."),
}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows a default only where there is one to show (None means: from the preset, or said in the help)."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _layers_arg(value: str):
    from .baselines.etd import parse_layers

    try:
        parse_layers(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
    return value


_TOKEN = re.compile(r"\b(hf_|api_)[A-Za-z0-9]{8,}")


def redact(message: str) -> str:
    """`message` with anything that looks like a Hugging Face token masked (an error may quote what was typed)."""
    return _TOKEN.sub(lambda m: m.group(1) + "***", message)


class _RedactingParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors never echo a token typed in the wrong place."""

    def error(self, message):
        super().error(redact(message))


def dataclass_parser(command: str):
    """The HfArgumentParser of a dataclass command: one flag per field, named as the field."""
    from transformers.hf_argparser import HfArgumentParser

    class Parser(HfArgumentParser):
        def error(self, message):
            super().error(redact(message))

    classes, _, description = DATACLASS_COMMANDS[command]
    parser = Parser(classes(), prog=f"wid-hf {command}", description=description,
                    formatter_class=_HelpFormatter)
    for action in parser._actions:
        if action.dest == "keep_layers":
            action.type = _layers_arg
    return parser


def parse_dataclass_command(command: str, argv: list[str]) -> dict:
    """The settings given on the command line, by field name (defaults are left to `Job.create`)."""
    parser = dataclass_parser(command)
    if "-h" in argv or "--help" in argv:
        parser.print_help()
        raise SystemExit(0)
    for action in parser._actions:
        action.default = argparse.SUPPRESS  # only what the user typed reaches the namespace
    given = vars(parser.parse_args(argv))
    if command == "baseline" and "method" not in given:
        parser.error("the following arguments are required: --method")
    return given


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser (subcommands); the dataclass commands parse their own flags."""
    parser = _RedactingParser(
        prog="wid-hf",
        description="Compress BERT masked-LM teachers by Weight-Inherited Distillation (WID).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `wid-hf COMMAND --help` for each command's options.",
    )
    parser.add_argument("--version", action="version", version=f"wid_hf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_, _) in DATACLASS_COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)

    m = sub.add_parser("merge", help="Turn a WID checkpoint into a standard student.",
                       description="Load the teacher, apply a WID checkpoint (a checkpoint-N folder or a "
                       "WIDModel.save_pretrained folder) and save the merged student.")
    m.add_argument("--teacher", help="The teacher the checkpoint was trained from (default: offline MiniLM). For a "
                   "job directory, the warmed-up teacher inside it is used automatically.")
    m.add_argument("--checkpoint", required=True, help="WID checkpoint folder, or a `wid-hf compress` output dir.")
    m.add_argument("--output", required=True, help="Folder for the student.")
    m.add_argument("--finalize", action="store_true",
                   help="Prune every group to its target and apply hard masks first (for a run stopped early).")
    m.add_argument("--debug", action="store_true", help="Show full tracebacks instead of one-line errors.")

    e = sub.add_parser("evaluate", help="Masked-LM and fine-tuning evaluation of a model.",
                       description="Held-out masked-LM loss/accuracy, and optionally fine-tuning accuracy on a "
                       "labelled task, for one or more models side by side.")
    e.add_argument("--model", action="append", required=True, help="A BERT folder or Hub id (repeat to compare).")
    e.add_argument("--eval-corpus", help="Held-out text (default offline-bbc).")
    e.add_argument("--sequences", type=int, default=256, help="Held-out sequences (default 256).")
    e.add_argument("--seq-len", type=int, default=128, help="Tokens per sequence (default 128).")
    e.add_argument("--task", choices=("none", "polarity", "bbc-topics", "csv", "glue"), default="none",
                   help="Fine-tuning task: polarity (Pang & Lee sentences, --task-file), bbc-topics (offline BBC), "
                   "csv (label,text rows in --task-file), glue (--glue-task, needs the Hub).")
    e.add_argument("--task-file", help="CSV of label,text rows (polarity / csv tasks).")
    e.add_argument("--glue-task", default="sst2", help="GLUE task name (default sst2).")
    e.add_argument("--seeds", type=int, nargs="+", default=[0], help="Fine-tuning seeds (mean ± std over them).")
    e.add_argument("--epochs", type=float, default=3.0, help="Fine-tuning epochs (default 3).")
    e.add_argument("--finetune-lr", type=float, default=5e-5, help="Fine-tuning learning rate (default 5e-5).")
    e.add_argument("--max-train", type=int, help="Cap on training examples (fast runs).")
    e.add_argument("--lora", action="store_true", help="Fine-tune a LoRA adapter (peft) instead of all weights.")
    e.add_argument("--output", help="Write the results as JSON here.")
    e.add_argument("--debug", action="store_true", help="Show full tracebacks instead of one-line errors.")

    t = sub.add_parser("prepare-teacher", help="Adapt a BERT encoder (e.g. a sentence encoder) into an MLM teacher.",
                       description="Train an MLM head and adapt the encoder by plain masked-LM training (the recipe "
                       "that produced the offline benchmark teacher: head lr 2e-3, encoder lr 1e-4, 50-step warm-up, "
                       "linear decay to 5 percent, 1,500 steps of 32x128).")
    t.add_argument("--teacher", help="Encoder to adapt (default: the offline all-MiniLM-L6-v2).")
    t.add_argument("--corpus", action="append", help="Training text (repeatable; default offline-wiki).")
    t.add_argument("--steps", type=int, default=1500, help="Optimizer steps (default 1500).")
    t.add_argument("--batch-size", type=int, default=32, help="Sequences per step (default 32).")
    t.add_argument("--seq-len", type=int, default=128, help="Tokens per sequence (default 128).")
    t.add_argument("--head-lr", type=float, default=2e-3, help="Learning rate of the MLM head (default 2e-3).")
    t.add_argument("--encoder-lr", type=float, default=1e-4, help="Learning rate of the encoder (default 1e-4).")
    t.add_argument("--seed", type=int, default=0, help="Seed (default 0).")
    t.add_argument("--output", required=True, help="Folder for the adapted teacher (resumable).")
    t.add_argument("--debug", action="store_true", help="Show full tracebacks instead of one-line errors.")
    return parser


# ---------------------------------------------------------------------------------------------- commands
def cmd_compress(given: dict) -> int:
    """`compress` and `baseline`: one pipeline run (wid_hf.pipeline.run)."""
    from .pipeline import Job, run

    command = {f.name for klass in (HubArguments, CommandArguments) for f in dataclasses.fields(klass)}
    job = Job.create(**{k: v for k, v in given.items() if k not in command})
    report = run(job)
    h = report["heldout"]
    method = job.job.method + ("" if job.job.objective == "mlm" else f"+{job.job.objective}")
    print(f"{method} student: {report['student']['path']}  |  held-out MLM accuracy teacher "
          f"{h['teacher']['mlm_accuracy']:.3f} -> student {h['student']['mlm_accuracy']:.3f}  |  "
          f"{report['compression_ratio']:.2f}x smaller, {report['inference']['speedup']:.2f}x faster")
    if given.get("push_to_hub"):
        return _push(report["student"]["path"], given["push_to_hub"], report, HubArguments(
            **{f.name: given[f.name] for f in dataclasses.fields(HubArguments) if f.name in given}))
    return 0


def _push(student_dir: str, repo: str, report, hub: HubArguments) -> int:
    from .hub import PushError, PushRefused, push_student

    try:
        info = push_student(student_dir, repo, report=report, private=hub.private, revision=hub.hub_revision,
                            create_pr=hub.create_pr, token=hub.token)
    except PushError as err:  # refused for what was asked: 2, as any bad input; failed on the way: 1
        print(f"wid-hf push: error: {redact(str(err))}", file=sys.stderr)
        return 2 if isinstance(err, PushRefused) else 1
    print(f"pushed to {repo}" + (f": pull request {info.pr_url}" if getattr(info, "pr_url", None) else f" ({info.oid})"))
    return 0


def cmd_push(given: dict) -> int:
    push = PushArguments(**{k: v for k, v in given.items() if k in PushArguments.__dataclass_fields__})
    hub = HubArguments(**{k: v for k, v in given.items() if k in HubArguments.__dataclass_fields__})
    if push.report is not None and not os.path.isfile(push.report):
        raise UsageError(f"--report {push.report} is not a file; give the job's report.json (or leave --report out "
                         "to use the one next to the student folder, if there).")
    report = push.report or os.path.join(os.path.dirname(os.path.abspath(push.student)), "report.json")
    return _push(push.student, push.repo, report if os.path.isfile(report) else None, hub)


def _job_teacher(checkpoint: str, teacher: str | None):
    """For a `compress` output dir: its latest checkpoint, the teacher it trained from, and the teacher layers it
    kept (None for all)."""
    from .pipeline import read_job_settings
    from .resume import last_complete_checkpoint

    job = read_job_settings(checkpoint)
    if job is None:
        return checkpoint, teacher, None
    last = last_complete_checkpoint(os.path.join(checkpoint, "checkpoints"), remove_incomplete=False)
    if last is None:
        raise UsageError(f"{checkpoint} has no checkpoint yet; run `wid-hf compress` there first.")
    warmed = os.path.join(checkpoint, "teacher", "final")
    return last, teacher or (warmed if os.path.isdir(warmed) else job.get("teacher")), job.get("keep_layers")


def cmd_merge(args) -> int:
    from .model import WIDModel
    from .teacher import load_teacher

    if not os.path.exists(args.checkpoint):
        raise UsageError(f"No checkpoint at {args.checkpoint}.")
    checkpoint, teacher_spec, keep_layers = _job_teacher(args.checkpoint, args.teacher)
    loaded = load_teacher(teacher_spec)
    source = loaded.model
    if keep_layers is not None:  # the job trained on a subset of the teacher's layers
        from .baselines.etd import resolve_layers, select_layers

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
    from .evaluation import context_blindness, evaluate_mlm
    from .teacher import load_teacher

    results = {}
    for spec in args.model:
        loaded = load_teacher(spec)
        if not loaded.has_mlm_head:
            raise UsageError(f"{spec} has no MLM head; masked-LM evaluation needs a BertForMaskedLM.")
        from .data import heldout_sequences

        cache = os.path.join(os.path.expanduser("~"), ".cache", "wid_hf")
        heldout = heldout_sequences(args.eval_corpus, loaded.tokenizer, args.seq_len, args.sequences, cache,
                                    flag="--eval-corpus")
        entry = {"heldout": evaluate_mlm(loaded.model, heldout, desc=f"MLM eval {spec}", tokenizer=loaded.tokenizer)}
        h = entry["heldout"]
        if args.task != "none":
            from .finetune import finetune_eval

            entry["finetune"] = finetune_eval(spec, args.task, task_file=args.task_file, glue_task=args.glue_task,
                                              seeds=args.seeds, epochs=args.epochs, learning_rate=args.finetune_lr,
                                              max_train=args.max_train, lora=args.lora)
        results[spec] = entry
        line = (f"{spec}: held-out MLM loss {h['mlm_loss']:.3f}, accuracy {h['mlm_accuracy']:.3f}, top-1 "
                f"{h['top1_distinct']:,} different tokens ({h['top1_most_common_token']!r} at "
                f"{100 * h['top1_share']:.0f}% of {h['masked_tokens']:,} positions)")
        if "finetune" in entry:
            f = entry["finetune"]
            line += f"; {f['task']} {f['metric']} {f['mean']:.3f} ± {f['std']:.3f} over {len(f['scores'])} seed(s)"
        print(line)
        blind = context_blindness(h)
        if blind:
            print(f"  warning: {spec} {blind}")
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


def quiet_libraries(progress: bool = True) -> None:
    """What the libraries print that a user of the command line cannot act on: transformers' load reports and
    tokenizer length notes (the corpus is chunked after tokenising), datasets' and huggingface_hub's info lines,
    the pin_memory note on machines without a GPU. wid_hf's own warnings stay. With ``progress=False`` every
    library's progress bars go too (loading and writing weights, dataset maps, downloads). ``--debug`` keeps all."""
    import warnings

    import datasets
    import huggingface_hub.utils
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    datasets.utils.logging.set_verbosity_error()
    huggingface_hub.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    if not progress:
        transformers_logging.disable_progress_bar()
        datasets.disable_progress_bars()
        huggingface_hub.utils.disable_progress_bars()


def in_flag_terms(message: str, command: str, argv: list[str]) -> str:
    """An error raised by the Python API, reworded for the command line: ``WIDConfig(target_ratio=0.5)`` becomes
    ``--ratio 0.5`` and a field name the flag the user typed for it (``--target-hidden-size`` if they typed that
    spelling, else the field's shortest dashed flag), so the message names what the user can change."""
    flags = {}
    for action in dataclass_parser(command)._actions:
        if action.option_strings and action.dest != "help":
            typed = [o for o in action.option_strings if any(a == o or a.startswith(o + "=") for a in argv)]
            dashed = sorted((o for o in action.option_strings if "_" not in o), key=len) or action.option_strings
            flags[action.dest] = typed[0] if typed else dashed[0]
    message = re.sub(r"WIDConfig\.from_preset\(([^)]*)\)",
                     lambda m: f"{flags.get('preset', '--preset')} {m.group(1).replace(chr(39), '')}", message)
    message = re.sub(r"WIDConfig\((\w+)=([^)]*)\)",
                     lambda m: f"{flags.get(m.group(1), m.group(1))} {m.group(2)}", message)
    message = re.sub(r"--(\w+)\b", lambda m: flags.get(m.group(1), m.group(0)), message)
    return re.sub(r"(?<![-\w./])(\w+)(?![\w(/])",  # not inside a path: a folder may be named max_steps
                  lambda m: flags[m.group(1)] if m.group(1) in flags and "_" in m.group(1) else m.group(1), message)


COMMANDS = {"compress": cmd_compress, "baseline": cmd_compress, "push": cmd_push, "merge": cmd_merge,
            "evaluate": cmd_evaluate, "prepare-teacher": cmd_prepare_teacher}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else None
    if command in DATACLASS_COMMANDS:
        args = parse_dataclass_command(command, argv[1:])
        debug = args.get("debug", False)
    else:
        namespace = build_parser().parse_args(argv)
        command, args, debug = namespace.command, namespace, namespace.debug
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not debug:
        progress = not (args.get("disable_tqdm", False) if isinstance(args, dict) else getattr(args, "no_progress", False))
        quiet_libraries(progress)
    try:
        return COMMANDS[command](args)
    except KeyboardInterrupt:
        print("wid-hf: interrupted; run the same command again to resume.", file=sys.stderr)
        return 130
    except (UsageError, ValueError, TypeError, OSError, ConnectionError) as err:
        if debug:
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if command in DATACLASS_COMMANDS:
            message = in_flag_terms(message, command, argv)
        print(f"wid-hf {command}: error: {redact(message)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
