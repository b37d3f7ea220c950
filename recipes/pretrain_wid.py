"""The paper's students (WID55, WID11 with "dim" or "head") from bert-base-uncased on English Wikipedia + BookCorpus,
with the reference hyper-parameters (docs/method.md, "Optimisation"): AdamW (0.9, 0.999), eps 1e-6, weight decay 0.01,
lr 1e-6 for inherited weights and 5e-5 for compactors, 1% warm-up then linear decay, global batch 960 of 128 tokens,
400,000 steps, fp32, mask interval 500.

Multi-GPU (8 x 120 = 960 sequences per step)::

    accelerate launch --multi_gpu --num_processes 8 recipes/pretrain_wid.py --student wid55 --output-dir runs/wid55
    torchrun --nproc_per_node 8 recipes/pretrain_wid.py --student wid11 --output-dir runs/wid11

On fewer devices the script raises gradient accumulation to keep the global batch at 960. Re-running the same command
resumes from the last checkpoint. ``--smoke TEACHER_DIR CORPUS_FILE`` swaps only the inputs (a tiny local teacher and a
text file) and the step count, so CI exercises this exact code path.

This recipe drives `WIDTrainer` directly, the drop-in Trainer use that runs one process per GPU under accelerate or
torchrun. The single-process job (teacher warm-up, held-out evaluation, report) is `wid-hf compress --preset wid55`,
which runs `wid_hf.pipeline`; both take their settings from the same presets and `WIDTrainingArguments` defaults.
"""

from __future__ import annotations

import argparse
import os

from transformers import AutoTokenizer, BertForMaskedLM, DataCollatorForLanguageModeling

from wid_hf import WIDConfig, WIDTrainer, WIDTrainingArguments
from wid_hf.data import prepare_corpus
from wid_hf.pipeline import JOB_PRESETS
from wid_hf.resume import last_complete_checkpoint

REFERENCE_CORPORA = ["wikimedia/wikipedia:20231101.en", "bookcorpus/bookcorpus"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", choices=("wid55", "wid11", "wid11-head"), default="wid55")
    p.add_argument("--teacher", default="bert-base-uncased")
    p.add_argument("--corpus", nargs="+", default=REFERENCE_CORPORA)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--steps", type=int, default=JOB_PRESETS["wid55"]["max_steps"])
    p.add_argument("--global-batch", type=int, default=960)
    p.add_argument("--per-device-batch", type=int, default=120)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--save-steps", type=int, default=5000)
    p.add_argument("--bf16", action="store_true", help="Deviation from the reference (fp32), for speed.")
    p.add_argument("--smoke", nargs=2, metavar=("TEACHER_DIR", "CORPUS_FILE"),
                   help="CI: a tiny local teacher and corpus, a few steps, everything else unchanged.")
    a = p.parse_args(argv)

    wid_config = WIDConfig.from_preset(a.student)
    if a.smoke:
        a.teacher, a.corpus = a.smoke[0], [a.smoke[1]]
        a.steps, a.global_batch, a.per_device_batch, a.seq_len, a.save_steps = 12, 8, 4, 32, 6
        teacher = BertForMaskedLM.from_pretrained(a.teacher)
        wid_config = WIDConfig(target_ratio=0.5, head_strategy=wid_config.head_strategy, mask_interval=2,
                               pruning_intervals=2)  # the tiny teacher cannot hold the 768-wide presets
    else:
        teacher = BertForMaskedLM.from_pretrained(a.teacher)
    tokenizer = AutoTokenizer.from_pretrained(a.teacher)

    world = int(os.environ.get("WORLD_SIZE", "1"))
    accumulation = max(1, a.global_batch // (world * a.per_device_batch))
    if accumulation * world * a.per_device_batch != a.global_batch:
        print(f"note: global batch {accumulation * world * a.per_device_batch} (asked {a.global_batch})")

    from datasets import concatenate_datasets

    cache = os.path.join(a.output_dir, "cache")
    train = concatenate_datasets([prepare_corpus(c, tokenizer, a.seq_len, cache) for c in a.corpus]).shuffle(seed=0)

    args = WIDTrainingArguments(
        output_dir=a.output_dir,
        max_steps=a.steps,
        per_device_train_batch_size=a.per_device_batch,
        gradient_accumulation_steps=accumulation,
        # learning rates (1e-6 inherited, 5e-5 compactors), AdamW (0.9, 0.999, eps 1e-6, wd 0.01), 1% warm-up and
        # linear decay are WIDTrainingArguments' defaults: the reference optimisation
        save_strategy="steps",
        save_steps=a.save_steps,
        save_total_limit=3,
        logging_steps=100 if not a.smoke else 1,
        bf16=a.bf16,
        report_to="all" if not a.smoke else [],
        save_student_to=os.path.join(a.output_dir, "student"),
        dataloader_num_workers=2 if not a.smoke else 0,
        use_cpu=bool(a.smoke),
    )
    trainer = WIDTrainer(model=teacher, wid_config=wid_config, args=args, train_dataset=train,
                         processing_class=tokenizer,
                         data_collator=DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15))
    trainer.train(resume_from_checkpoint=last_complete_checkpoint(a.output_dir))
    if trainer.is_world_process_zero():
        from wid_hf.plotting import plot_training

        plot_training(trainer.state, os.path.join(a.output_dir, "training.png"), title=f"WID {a.student}")


if __name__ == "__main__":
    main()
