"""Run by test_trainer.py under `torchrun --nproc_per_node 2` (and `accelerate launch`): a short WIDTrainer run on
CPU/gloo (optionally with gradient accumulation: argv[2]; argv[3] "budget": budget mode, whose Taylor scores start
from the teacher's); every rank writes its masks (with scores) and merged student to OUT/rank{N}.pt so the test can
compare them."""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import mlm_dataset, tiny_teacher  # noqa: E402
from transformers import default_data_collator  # noqa: E402

from wid_hf import WIDConfig, WIDTrainer, WIDTrainingArguments  # noqa: E402


def main(out: str, accumulation: int = 1, mode: str = "reference") -> None:
    sizes = dict(target_hidden_size=24, target_intermediate_size=40)
    if mode == "budget":
        wid_config = WIDConfig.for_budget(12, taylor_init_batches=2, **sizes)
    else:
        wid_config = WIDConfig(mask_interval=2, pruning_intervals=4, **sizes)
    args = WIDTrainingArguments(
        output_dir=os.path.join(out, "run"),
        per_device_train_batch_size=4 // accumulation,
        gradient_accumulation_steps=accumulation,  # > 1: effective weights formed once per step (FoldReuse)
        max_steps=12,
        learning_rate=1e-3,
        compactor_learning_rate=1e-2,
        logging_steps=4,
        save_strategy="no",
        report_to=[],
        seed=0,
        use_cpu=True,
        disable_tqdm=True,
        ddp_backend="gloo",
    )
    trainer = WIDTrainer(
        model=tiny_teacher(),
        wid_config=wid_config,
        args=args,
        train_dataset=mlm_dataset(n=64),
        data_collator=default_data_collator,
    )
    trainer.train()
    student = trainer.save_student(os.path.join(out, "student"))
    rank = trainer.args.process_index
    torch.save(
        {
            "world_size": trainer.args.world_size,
            "compacted": trainer.wid_model.compactors_compacted,
            "masks": {k: v.clone() for k, v in trainer.wid_model.masks.state_dict().items()},
            "student": {k: v.clone() for k, v in student.state_dict().items()},
        },
        os.path.join(out, f"rank{rank}.pt"),
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1, sys.argv[3] if len(sys.argv) > 3 else "reference")
