"""What a training step costs: plain teacher, plain student, WID while pruning and WID under hard masks, before and
after the cost work (the student path, the MLM head at masked positions only), with projected full-schedule times.

Every configuration runs in its own Python process (so peak RSS is that configuration's alone: model, gradients,
AdamW state and activations), on the same random batch and thread count; the step time is the median of
`--repeats` optimizer steps after one warm-up step; FLOPs of one step (the forwards and backwards of its
micro-batches) are counted with `torch.utils.flop_counter`. Ratios are to the plain teacher measured in the same run.

    python benchmarks/step_speed.py                                  # BERT-base and MiniLM shapes, 8x128 and 32x128
    python benchmarks/step_speed.py --shapes minilm --batches 8 --repeats 5
    python benchmarks/step_speed.py --device cuda --dtype bf16       # on a GPU machine: CUDA, bf16 autocast
    python benchmarks/step_speed.py --shapes minilm --batches 8 --accumulation 4 [--no-fold-once]
    python benchmarks/step_speed.py --device cuda --optimizer fused --no-before --compile default  # torch.compile
    python benchmarks/step_speed.py --reproject [--name step_speed]  # projections again, from the committed step costs

"before" rows are the code as it was: the full path under hard masks (teacher-size R·W·L products, masks
multiplied in) and the MLM head at every position (transformers' own loss). "wid-hard-whole" is the student path
with whole compactors (before `WIDModel.compact_compactors`); "wid-hard" compacts them, the default. Writes
benchmarks/results/step_speed.{json,md}. The projections depend on the schedule as well as on the step costs:
`--reproject` recomputes them from a results file's measured rows with the schedule as it is now (budget mode's
hard-mask step, say), measuring nothing and keeping the measurement date.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SHAPES = {
    "base": dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072, num_hidden_layers=12),
    "minilm": dict(hidden_size=384, num_attention_heads=12, intermediate_size=1536, num_hidden_layers=6),
    "tiny": dict(hidden_size=48, num_attention_heads=4, intermediate_size=96, num_hidden_layers=2),  # CI smoke
}
TARGETS = {"half": None, "wid11": (192, 768)}  # half: half hidden, half FFN; WID55 (516/2064) lies between them
REFERENCE_TOTAL_STEPS = 400_000  # the paper's schedule (WID_SPEC: pruning ends at step 8,000 of 400,000)
BUDGET_STEPS = (120, 600, 1500)  # the quality benchmark's sweep (MiniLM teacher, 8x128)


def target_widths(shape: str, target: str) -> tuple[int, int]:
    if TARGETS[target] is None:
        return SHAPES[shape]["hidden_size"] // 2, SHAPES[shape]["intermediate_size"] // 2
    return TARGETS[target]


# wid-hard: the default (student path, compactors compacted to their kept slices); wid-hard-whole: the student path
# with whole compactors (pruned rows/columns kept as zero parameters with gradients and AdamW state)
MODES = ("teacher", "student", "wid-pruning", "wid-hard", "wid-hard-whole")


def plan(shapes, batches, modes=MODES, before=True) -> list[dict]:
    """The configurations to measure: (mode, target, before) per shape and batch. ``before=False`` drops the rows of
    the code as it was, except the plain teacher with transformers' own loss, the reference of every ratio."""
    runs = []
    for shape in shapes:
        targets = ["half", "wid11"] if shape == "base" else ["half"]
        for batch in batches:
            common = dict(shape=shape, batch=batch)
            runs += [dict(common, mode="teacher", target="half", before=True),
                     dict(common, mode="teacher", target="half", before=False)]
            runs += [dict(common, mode="student", target=t, before=False) for t in targets]
            runs += [dict(common, mode="wid-pruning", target="half", before=b) for b in (True, False)]
            # the full path ("before") forms teacher-size products whatever the target: measured at half width only
            runs += [dict(common, mode="wid-hard", target="half", before=True)]
            runs += [dict(common, mode="wid-hard-whole", target="half", before=False)]
            runs += [dict(common, mode="wid-hard", target=t, before=False) for t in targets]
    return [r for r in runs if r["mode"] in modes and (before or not r["before"] or r["mode"] == "teacher")]


def worker(args) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import BertConfig, BertForMaskedLM

    sys.path.insert(0, os.path.dirname(HERE))
    from wid_hf import WIDConfig, get_wid_model
    from wid_hf.mlm import masked_lm_loss
    from wid_hf.utils import student_config

    torch.manual_seed(0)
    device = torch.device(args.device)
    config = BertConfig(vocab_size=30522, **SHAPES[args.shape])
    hidden, ffn = target_widths(args.shape, args.target)
    if args.mode == "teacher":
        model = BertForMaskedLM(config)
    elif args.mode == "student":
        model = BertForMaskedLM(student_config(config, hidden, ffn))  # head_strategy "dim": the teacher's head count
    else:
        model = get_wid_model(BertForMaskedLM(config), WIDConfig(target_hidden_size=hidden, target_intermediate_size=ffn,
                                                                 mask_interval=1, pruning_intervals=2))
        if args.mode == "wid-pruning":  # masks partly grown, soft: the masked LayerNorm path is active
            model.update_masks(1)
        else:
            model.compact_at_hard_masks = args.mode == "wid-hard"
            model.finalize_masks()
            model.student_path = not args.before
    model.to(device).train()
    # --compile: the model runs through torch.compile (Trainer's torch_compile / torch_compile_mode); the FLOPs are
    # counted on the eager module, which does the same products
    run_model = torch.compile(model, mode=None if args.compile == "default" else args.compile) if args.compile else model
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30522, (args.batch, args.seq), generator=g)
    labels = torch.full_like(ids, -100)
    pick = torch.rand(ids.shape, generator=g) < 0.15
    labels[pick] = ids[pick]
    batch = {"input_ids": ids.to(device), "labels": labels.to(device)}
    # foreach: torch's default AdamW (foreach kernels on CUDA; torch has none on CPU, where it is the for-loop);
    # fused: Trainer's default optim ("adamw_torch_fused"); for-loop: one update per tensor. (Passing fused=False
    # is not the default: it turns foreach off too, which the GPU tables of 2026-11-28 measured by mistake.)
    choice = {"foreach": {}, "fused": {"fused": True}, "for-loop": {"foreach": False}}[args.optimizer]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, **choice)
    implementation = ("fused" if args.optimizer == "fused" else
                      "foreach" if args.optimizer == "foreach" and device.type == "cuda" else "for-loop")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")

    def forward_backward():
        with autocast:
            loss = run_model(**batch).loss if args.before else masked_lm_loss(run_model, batch)[0]
        loss.backward()

    reuse = args.accumulation > 1 and args.fold_once and hasattr(model, "accumulating")

    def micro_batches():  # one optimizer step's forwards and backwards: --accumulation micro-batches of --batch
        for i in range(args.accumulation):
            last = i == args.accumulation - 1
            with model.accumulating(last, args.accumulation) if reuse else contextlib.nullcontext():
                forward_backward()

    def step():
        optimizer.zero_grad(set_to_none=True)
        if args.compile:
            torch.compiler.cudagraph_mark_step_begin()  # reduce-overhead: a new step may overwrite graph outputs
        micro_batches()
        optimizer.step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    sync()
    t0 = time.perf_counter()
    for _ in range(3 if args.compile else 1):  # warm-up: allocations, AdamW state; compiling and recording graphs
        step()
    sync()
    warmup_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeats):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    result = {"step_s": statistics.median(times), "times": times, "adamw": implementation, "warmup_s": warmup_s}
    if args.compile:  # whether the compiled step is whole: graphs, graph breaks, steps that skipped CUDA graphs
        from torch._dynamo.utils import counters

        result["compile_stats"] = {"graphs": counters["stats"]["unique_graphs"],
                                   "graph_breaks": sum(counters["graph_break"].values()),
                                   "cudagraph_skips": counters["inductor"]["cudagraph_skips"]}
    if device.type == "cuda":
        result["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        result["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.profile:  # after the peak is read: where one step's time goes, by operator (stderr; result on stdout)
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            for _ in range(3):
                step()
            sync()
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=args.profile), file=sys.stderr)
    optimizer.zero_grad(set_to_none=True)
    counter = FlopCounterMode(display=False)
    with counter:
        run_model = model  # the closures above read it: count on the eager module
        micro_batches()
    result["gflop"] = counter.get_total_flops() / 1e9
    return result


def projections(rows: list[dict]) -> list[dict]:
    """Wall time of whole schedules from the measured step costs: the reference WID11 schedule at BERT-base shape
    (the full path's cost does not depend on the target, so "before" uses the half-width measurement), and the
    quality benchmark's budget-mode runs (MiniLM, 8x128); before and after."""
    sys.path.insert(0, os.path.dirname(HERE))
    from wid_hf.config import TeacherDims, WIDConfig
    from wid_hf.schedule import pruning_end_step

    def cost(shape, batch, mode, target, before):
        for r in rows:
            if (r["shape"], r["batch"], r["mode"], r["target"], r["before"]) == (shape, batch, mode, target, before):
                return r["step_s"]
        return None

    kinds = {"hidden", "attention", "ffn", "head"}
    out = []
    for preset in ("wid11",):
        dims = TeacherDims(768, 3072, 12)
        config = WIDConfig.from_preset(preset).resolve(dims)
        hard_step = pruning_end_step(config, dims, kinds) + config.mask_interval
        for batch in sorted({r["batch"] for r in rows if r["shape"] == "base"}):
            entry = {"run": f"{preset.upper()} reference schedule ({REFERENCE_TOTAL_STEPS:,} steps, BERT-base, {batch}x128)",
                     "hard_mask_step": hard_step, "total_steps": REFERENCE_TOTAL_STEPS}
            for label, before in (("before", True), ("after", False)):
                prune = cost("base", batch, "wid-pruning", "half", before)
                hard = cost("base", batch, "wid-hard", "half" if before else preset, before)
                if prune is not None and hard is not None:
                    entry[label] = hard_step * prune + (REFERENCE_TOTAL_STEPS - hard_step) * hard
            teacher = cost("base", batch, "teacher", "half", True)
            if teacher is not None:
                entry["plain_teacher"] = REFERENCE_TOTAL_STEPS * teacher
            if "before" in entry or "after" in entry:
                out.append(entry)
    dims = TeacherDims(384, 1536, 12)
    for steps in BUDGET_STEPS:
        config = WIDConfig.for_budget(steps, target_hidden_size=192, target_intermediate_size=768).resolve(dims)
        hard_step = pruning_end_step(config, dims, kinds) + config.mask_interval
        entry = {"run": f"budget mode, {steps} steps (MiniLM 384->192, 8x128; the quality benchmark)",
                 "hard_mask_step": hard_step, "total_steps": steps}
        for label, before in (("before", True), ("after", False)):
            prune, hard = cost("minilm", 8, "wid-pruning", "half", before), cost("minilm", 8, "wid-hard", "half", before)
            if prune is not None and hard is not None:
                entry[label] = hard_step * prune + (steps - hard_step) * hard
        student = cost("minilm", 8, "student", "half", False)
        if student is not None:
            entry["plain_student"] = steps * student
        if "before" in entry or "after" in entry:
            out.append(entry)
    return out


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:,.1f} h" if seconds >= 3600 else f"{seconds / 60:,.1f} min"


def write_results(rows, meta, out_dir, name, reprojected: str | None = None) -> str:
    """Write <name>.md and .json. `reprojected`: the date the projections were recomputed from rows measured on
    meta["measured"] (--reproject)."""
    lines = [
        "| shape | batch | run | target | s/step | × teacher | × teacher (masked head) | GFLOP/step | FLOP ratio | "
        "share of FLOP bound | peak MiB | × teacher memory |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        same = [t for t in rows if (t["shape"], t["batch"], t["mode"]) == (r["shape"], r["batch"], "teacher")]
        teacher = next(t for t in same if t["before"])
        teacher_masked = next((t for t in same if not t["before"]), teacher)
        flop_ratio = r["gflop"] / teacher["gflop"]
        time_ratio = r["step_s"] / teacher["step_s"]
        label = r["mode"] + (" (before)" if r["before"] else "")
        target = "-" if r["mode"] == "teacher" else "x".join(map(str, target_widths(r["shape"], r["target"])))
        lines.append(
            f"| {r['shape']} | {r['batch']}x{r['seq']} | {label} | {target} | {r['step_s']:.3g} | {time_ratio:.2f} | "
            f"{r['step_s'] / teacher_masked['step_s']:.2f} | {r['gflop']:.0f} | {flop_ratio:.2f} | "
            f"{flop_ratio / time_ratio:.0%} | {r['peak_mib']:.0f} | {r['peak_mib'] / teacher['peak_mib']:.2f} |"
        )
    proj = projections(rows)
    plines = ["| run | hard masks at | before | after | speed-up | for reference |", "|---|---|---|---|---|---|"]
    for p in proj:
        ref = (f"plain teacher {_hours(p['plain_teacher'])}" if "plain_teacher" in p
               else f"plain student {_hours(p['plain_student'])}" if "plain_student" in p else "")
        before, after = p.get("before"), p.get("after")
        plines.append(f"| {p['run']} | step {p['hard_mask_step']:,} | {_hours(before) if before else '-'} | "
                      f"{_hours(after) if after else '-'} | {f'{before / after:.2f}×' if before and after else '-'} | "
                      f"{ref} |")
    adamw = ", ".join(sorted({r.get("adamw", "not recorded") for r in rows}))
    compiled = (f" Every model, the teacher included, ran through torch.compile (mode {meta['compile']}); the warm-up "
                "(compiling, recording graphs) is excluded from s/step and recorded as warmup_s in the JSON."
                if meta.get("compile") else "")
    measured = {k: v for k, v in meta.items() if k != "measured"}
    again = (f" Projections recomputed {reprojected} from these step costs with the schedule of that date "
             "(`--reproject`)." if reprojected else "")
    text = (f"Measured {meta['measured']} on {measured}. AdamW implementation: {adamw}.{compiled}{again}\n\n"
            "× teacher: step time over the plain teacher's (transformers' own MLM loss, head at every position), "
            "measured in the same run. FLOP ratio: the same for counted FLOPs; share of FLOP bound = FLOP ratio / "
            "time ratio (100%: the run is exactly as fast as its FLOPs allow, relative to the teacher). Peak memory: "
            "max RSS of the process on CPU (weights, gradients, AdamW state, activations), max allocated on CUDA.\n\n"
            + "\n".join(lines) + "\n\nProjected wall time of whole schedules on this machine, from the step costs above "
            "(steps before hard masks at the pruning cost, the rest at the hard-mask cost):\n\n" + "\n".join(plines) + "\n")
    with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows, "projections": proj}, f, indent=2)
    return text


def reproject(out_dir, name) -> str:
    """Recompute the projections of `<out_dir>/<name>.json` from its measured rows with the current schedule."""
    path = os.path.join(out_dir, f"{name}.json")
    if not os.path.isfile(path):
        raise SystemExit(f"--reproject reads measured step costs from {path}, which does not exist: run the benchmark "
                         "first, or give the --out / --name of an existing results file.")
    with open(path) as f:
        results = json.load(f)
    if not isinstance(results, dict) or not {"meta", "rows"} <= results.keys():
        raise SystemExit(f"--reproject: {path} holds no measured rows (no 'meta' and 'rows'): it is not a results file "
                         "of this benchmark; give the --out / --name of one.")
    meta = dict(results["meta"])
    if "measured" not in meta:  # files written before the date was kept in the JSON: the Markdown has it
        md = os.path.join(out_dir, f"{name}.md")
        found = None
        if os.path.isfile(md):
            with open(md) as f:
                found = re.match(r"Measured (\d{4}-\d{2}-\d{2})", f.read())
        meta["measured"] = found.group(1) if found else "on an unrecorded date"
    return write_results(results["rows"], meta, out_dir, name, reprojected=time.strftime("%Y-%m-%d"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["base", "minilm"])
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES, help="measure only these runs")
    parser.add_argument("--optimizer", choices=["foreach", "fused", "for-loop"], default="foreach",
                        help="AdamW implementation: foreach is torch's default (the for-loop on CPU), fused what "
                             "Trainer uses by default")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--name", default=None, help="results file name (default step_speed[_<device>_<dtype>])")
    parser.add_argument("--profile", type=int, default=0, metavar="ROWS",
                        help="with --worker: print the top ROWS operators of 3 profiled steps to stderr")
    parser.add_argument("--accumulation", type=int, default=1,
                        help="micro-batches per optimizer step (gradient accumulation); step times are per optimizer step")
    parser.add_argument("--no-fold-once", dest="fold_once", action="store_false",
                        help="with --accumulation: fold every layer in every micro-batch (the code before FoldReuse)")
    parser.add_argument("--compile", choices=["default", "reduce-overhead", "max-autotune"], default=None,
                        help="run every model through torch.compile in this mode (reduce-overhead: CUDA graphs); "
                             "ratios are then to the compiled teacher")
    parser.add_argument("--no-before", dest="with_before", action="store_false",
                        help="skip the rows of the code as it was (the plain teacher's stays: ratios are to it)")
    parser.add_argument("--reproject", action="store_true",
                        help="measure nothing: recompute the projections of --out/--name's results (default "
                             "step_speed) from its step costs with the schedule as it is now")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shape", default="base", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="teacher", help=argparse.SUPPRESS)
    parser.add_argument("--target", default="half", help=argparse.SUPPRESS)
    parser.add_argument("--before", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=8, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.reproject:
        print(reproject(args.out, args.name or "step_speed"))
        return

    import torch

    os.makedirs(args.out, exist_ok=True)
    name = args.name or ("step_speed" if args.device == "cpu" else f"step_speed_{args.device}_{args.dtype}")
    partial = os.path.join(args.out, f"{name}.partial.jsonl")  # a killed run resumes from the rows it measured
    done = []
    if os.path.isfile(partial):
        with open(partial) as f:
            done = [json.loads(line) for line in f if line.strip()]
    rows = []
    for run in plan(args.shapes, args.batches, args.modes, before=args.with_before):
        settings = dict(seq=args.seq, accumulation=args.accumulation, optimizer=args.optimizer, fold_once=args.fold_once,
                        compile=args.compile)
        previous = next((r for r in done if all(r.get(k) == v for k, v in {**run, **settings}.items())), None)
        if previous is not None:
            rows.append(previous)
            continue
        cmd = [sys.executable, __file__, "--worker", "--mode", run["mode"], "--batch", str(run["batch"]),
               "--shape", run["shape"], "--target", run["target"], "--seq", str(args.seq),
               "--repeats", str(args.repeats), "--device", args.device, "--dtype", args.dtype,
               "--optimizer", args.optimizer, "--accumulation", str(args.accumulation)]
        if not args.fold_once:
            cmd.append("--no-fold-once")
        if args.compile:
            cmd += ["--compile", args.compile]
        if run["before"]:
            cmd.append("--before")
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append({**run, **settings, **result})
        with open(partial, "a") as f:
            f.write(json.dumps(rows[-1]) + "\n")
        print(f"{run['shape']} {run['batch']}x{args.seq} {run['mode']}{' (before)' if run['before'] else ''} "
              f"[{run['target']}]: {result['step_s']:.2f} s/step, {result['gflop']:.0f} GFLOP, "
              f"peak {result['peak_mib']:.0f} MiB", flush=True)

    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "device": args.device, "dtype": args.dtype, "repeats": args.repeats, "optimizer": args.optimizer,
            "accumulation": args.accumulation, "fold_once": args.fold_once, "compile": args.compile,
            "measured": time.strftime("%Y-%m-%d")}
    if args.device.startswith("cuda"):
        meta["gpu"] = torch.cuda.get_device_name()
    print(write_results(rows, meta, args.out, name))
    os.remove(partial)


if __name__ == "__main__":
    main()
