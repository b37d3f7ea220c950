"""Training-step time and peak memory of a WID model against the plain teacher, measured in the same run.

Each measurement runs in its own Python process (so peak RSS is that configuration's alone), on the same random
batch, same thread count. Reported as ratios WID / plain; absolute seconds are for this machine only.

    python benchmarks/step_speed.py                      # BERT-base shape, batches 8x128 and 32x128
    python benchmarks/step_speed.py --shape minilm --batches 32 --repeats 5

Writes benchmarks/results/step_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

SHAPES = {
    "base": dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072, num_hidden_layers=12),
    "minilm": dict(hidden_size=384, num_attention_heads=12, intermediate_size=1536, num_hidden_layers=6),
    "tiny": dict(hidden_size=48, num_attention_heads=4, intermediate_size=96, num_hidden_layers=2),  # CI smoke
}
HERE = os.path.dirname(os.path.abspath(__file__))


def worker(args) -> dict:
    import torch
    from transformers import BertConfig, BertForMaskedLM

    sys.path.insert(0, os.path.dirname(HERE))
    from wid_hf import WIDConfig, get_wid_model

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, **SHAPES[args.shape])
    model = BertForMaskedLM(config)
    if args.mode != "plain":
        model = get_wid_model(model, WIDConfig(target_ratio=0.5, mask_interval=1, pruning_intervals=2))
        if args.mode == "wid-pruning":  # masks partly grown: the masked LayerNorm path is active
            model.update_masks(1)
        elif args.mode == "wid-hard":
            model.finalize_masks()
    model.train()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30522, (args.batch, args.seq), generator=g)
    labels = torch.full_like(ids, -100)
    pick = torch.rand(ids.shape, generator=g) < 0.15
    labels[pick] = ids[pick]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()

    step()  # warm-up (allocations, optimizer state)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    result = {"step_s": statistics.median(times), "times": times}
    if args.mode != "plain":
        # what the compactors alone cost: forming every effective weight R·W·L and its backward
        from wid_hf.layer import EmbeddingCompactor, WIDLinear

        wrappers = [m for m in model.modules() if isinstance(m, WIDLinear)]
        embeds = [m for m in model.modules() if isinstance(m, EmbeddingCompactor)]
        t = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            total = sum(m.effective_weight_and_bias()[0].sum() for m in wrappers)
            total = total + sum(m.effective_compactor().sum() for m in embeds)
            total.backward()
            t.append(time.perf_counter() - t0)
        result["effective_weights_s"] = statistics.median(t)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="base")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=["plain", "wid", "wid-pruning", "wid-hard"])
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="plain", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=8, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    import torch

    rows = []
    for batch in args.batches:
        row = {"shape": args.shape, "batch": batch, "seq": args.seq}
        for mode in args.modes:
            cmd = [sys.executable, __file__, "--worker", "--mode", mode, "--batch", str(batch),
                   "--shape", args.shape, "--seq", str(args.seq), "--repeats", str(args.repeats)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            row[mode] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{args.shape} {batch}x{args.seq} {mode}: {row[mode]['step_s']:.2f} s/step, "
                  f"peak {row[mode]['peak_rss_mib']:.0f} MiB", flush=True)
        rows.append(row)

    os.makedirs(args.out, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "device": "cpu", "repeats": args.repeats}
    with open(os.path.join(args.out, f"step_speed_{args.shape}.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2)
    lines = [
        "| shape | batch | mode | s/step | WID/plain time | compactor R·W·L share | peak RSS MiB | WID/plain memory |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        plain = row["plain"]
        for mode in args.modes:
            r = row[mode]
            share = f"{r['effective_weights_s'] / r['step_s']:.0%}" if "effective_weights_s" in r else "-"
            lines.append(
                f"| {row['shape']} | {row['batch']}x{row['seq']} | {mode} | {r['step_s']:.2f} | "
                f"{r['step_s'] / plain['step_s']:.2f} | {share} | {r['peak_rss_mib']:.0f} | "
                f"{r['peak_rss_mib'] / plain['peak_rss_mib']:.2f} |"
            )
    table = "\n".join(lines)
    with open(os.path.join(args.out, f"step_speed_{args.shape}.md"), "w") as f:
        f.write(f"Measured {time.strftime('%Y-%m-%d')} on {meta}\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
