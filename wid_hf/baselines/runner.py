"""Train a student by any of the methods wid_hf offers, with the same inputs and budget: used by `wid-hf baseline`,
`wid-hf compress --kd/--keep-layers` and benchmarks/quality.py.

Methods: ``wid``, ``etd-impt``, ``etd-rand``, ``truncation`` (the teacher's lower/upper/uniform layers at full width),
``random`` (random initialisation at the student's shape) and ``weight-distill`` (generator for half the steps,
then the materialised student). Every method but ``wid``/``weight-distill``'s first half then trains with
`objective`: ``mlm`` or one of the KD objectives of `DistillationTrainer`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ..config import WIDConfig

METHODS = ("wid", "etd-impt", "etd-rand", "truncation", "random", "weight-distill")


@dataclass
class BaselineBudget:
    steps: int
    batch_size: int
    seed: int = 0
    learning_rate: float = 5e-4  # plain students
    wid_learning_rate: float = 1e-4  # WID's inherited weights
    compactor_learning_rate: float = 2e-3  # WID's compactors, and the WD generator
    alpha: float = 0.5  # weight of the KD term
    importance_batches: int = 16  # ETD-Impt


def _args(out, steps, budget: BaselineBudget, lr, **kw):
    from ..trainer import WIDTrainingArguments

    return WIDTrainingArguments(output_dir=out, max_steps=steps, per_device_train_batch_size=budget.batch_size,
                                seed=budget.seed, learning_rate=lr, report_to=[], save_strategy="no",
                                logging_steps=max(1, steps // 10), disable_tqdm=True,
                                use_cpu=not torch.cuda.is_available(), **kw)


def truncation_layers(teacher_config, hidden: int, ffn: int) -> int:
    """How many full-width teacher layers fit the encoder budget of a student at (hidden, ffn), same depth."""
    s_layer = 4 * hidden * hidden + 2 * hidden * ffn
    t_layer = 4 * teacher_config.hidden_size ** 2 + 2 * teacher_config.hidden_size * teacher_config.intermediate_size
    return max(1, round(teacher_config.num_hidden_layers * s_layer / t_layer))


def train_student(method: str, teacher, tokenizer, train_dataset, wid_config: WIDConfig, budget: BaselineBudget,
                  output_dir: str, objective: str = "mlm", layers: Optional[Sequence[int]] = None):
    """Train a student by `method` and return it as a plain model of the teacher's class. The teacher is copied,
    never modified. `layers` keeps a subset of encoder layers (depth reduction) for wid/etd/truncation."""
    from transformers import BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling

    from ..trainer import WIDTrainer
    from .distill import DistillationTrainer, WIDDistillationTrainer
    from .etd import extract_student, layer_choice, select_layers
    from .weight_distillation import WeightGenerator

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    resolved = wid_config.resolve(teacher.config)
    hidden, ffn = resolved.target_hidden_size, resolved.target_intermediate_size
    kd = {} if objective == "mlm" else dict(teacher=copy.deepcopy(teacher), objective=objective, alpha=budget.alpha)
    torch.manual_seed(budget.seed)

    if method == "wid":
        source = select_layers(teacher, layers) if layers is not None else copy.deepcopy(teacher)
        cls = WIDTrainer if objective == "mlm" else WIDDistillationTrainer
        trainer = cls(model=source, wid_config=resolved, data_collator=collator, train_dataset=train_dataset,
                      args=_args(output_dir, budget.steps, budget, budget.wid_learning_rate,
                                 compactor_learning_rate=budget.compactor_learning_rate), **kd)
        trainer.train()
        return trainer.wid_model.merge_and_unload(progressbar=False)

    steps = budget.steps
    if method.startswith("etd"):
        batches = [collator([train_dataset[i] for i in range(j * budget.batch_size, (j + 1) * budget.batch_size)])
                   for j in range(budget.importance_batches)]
        student = extract_student(teacher, resolved, importance="gradient" if method == "etd-impt" else "random",
                                  batches=batches, layers=layers, seed=budget.seed)
    elif method == "truncation":
        keep = layers if layers is not None else layer_choice(
            "lower", teacher.config.num_hidden_layers, truncation_layers(teacher.config, hidden, ffn))
        student = select_layers(teacher, keep)
    elif method == "random":
        config = BertConfig.from_dict(teacher.config.to_dict())
        config.hidden_size, config.intermediate_size = hidden, ffn
        if layers is not None:
            config.num_hidden_layers = len(layers)
        student = BertForMaskedLM(config)
    else:  # weight-distill: the generator takes the first half of the budget
        generator = WeightGenerator(teacher, hidden, ffn, num_hidden_layers=len(layers) if layers else None,
                                    seed=budget.seed)
        loader = torch.utils.data.DataLoader(train_dataset, batch_size=budget.batch_size, shuffle=True,
                                             collate_fn=collator, generator=torch.Generator().manual_seed(budget.seed))
        optimizer = torch.optim.AdamW([p for p in generator.parameters() if p.requires_grad],
                                      lr=budget.compactor_learning_rate)
        generator.train()
        done = 0
        while done < steps // 2:
            for batch in loader:
                optimizer.zero_grad()
                generator(**batch).loss.backward()
                optimizer.step()
                done += 1
                if done >= steps // 2:
                    break
        student = generator.materialize()
        steps -= steps // 2

    trainer = DistillationTrainer(model=student, data_collator=collator, train_dataset=train_dataset,
                                  objective=objective, args=_args(output_dir, steps, budget, budget.learning_rate),
                                  **{k: v for k, v in kd.items() if k != "objective"})
    trainer.train()
    return student
