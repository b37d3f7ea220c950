"""Measuring teachers and students: held-out masked-LM loss and accuracy (and whether predictions depend on their
context), inference throughput, FLOPs."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from typing import Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .mlm import mlm_head_at


@torch.no_grad()
def evaluate_mlm(model, dataset, batch_size: int = 32, progressbar: bool = True, desc: str = "Masked-LM eval",
                 tokenizer=None) -> dict:
    """Mean masked-token cross-entropy and accuracy over a dataset with fixed ``labels`` (see `data.fixed_masks`),
    and how much the top-1 prediction depends on its context: ``top1_distinct`` (different top-1 tokens over all
    masked positions) and ``top1_share`` (the share of positions given the most common one, with its id
    ``top1_most_common``, and its text ``top1_most_common_token`` given a `tokenizer`). A model that ignores its input
    predicts one token everywhere (1 and 1.0); over hundreds of positions that is far better evidence than a handful
    of fill-mask sentences."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total_loss, correct, count = 0.0, 0, 0
    predicted = Counter()
    try:
        for start in tqdm(range(0, len(dataset), batch_size), desc=desc, disable=not progressbar, leave=False):
            rows = dataset[start : start + batch_size]
            ids = torch.tensor(rows["input_ids"], device=device)
            labels = torch.tensor(rows["labels"], device=device)
            mask = torch.tensor(rows["attention_mask"], device=device) if "attention_mask" in rows else None
            picked = labels != -100
            with mlm_head_at(model, picked):  # the head at the masked positions only
                logits = model(input_ids=ids, attention_mask=mask).logits.float()
            total_loss += F.cross_entropy(logits, labels[picked], reduction="sum").item()
            top1 = logits.argmax(-1)
            correct += (top1 == labels[picked]).sum().item()
            predicted.update(top1.tolist())
            count += int(picked.sum())
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("The evaluation set has no masked positions.")
    most_common, times = predicted.most_common(1)[0]
    result = {"mlm_loss": total_loss / count, "mlm_accuracy": correct / count, "masked_tokens": count,
              "top1_distinct": len(predicted), "top1_share": times / count, "top1_most_common": most_common}
    if tokenizer is not None:
        result["top1_most_common_token"] = tokenizer.convert_ids_to_tokens(most_common)
    return result


# A model that gives one token at this share of the held-out masked positions or more has (nearly) stopped reading its
# input. Measured on the default path's short runs (120 steps, 600 and 2,388 masked positions, seeds 0-2, 2026-11-28):
# collapsed students gave 1-4 different tokens with 58-100% on the most common, healthy ones 13 or more with 45% or
# less; the offline MiniLM teacher and the demo's student give about 20%.
CONTEXT_BLIND_SHARE = 0.5


def context_blindness(measured: dict) -> Optional[str]:
    """From `evaluate_mlm`'s top-1 statistics: a phrase saying that the model ignores (or mostly ignores) its input,
    or None when its predictions depend on their context."""
    share = measured.get("top1_share")
    if share is None or share < CONTEXT_BLIND_SHARE:
        return None
    token = measured.get("top1_most_common_token", f"token id {measured['top1_most_common']}")
    if measured["top1_distinct"] == 1:
        return f"predicts `{token}` at every held-out masked position: it ignores its input"
    return (f"predicts `{token}` at {100 * share:.0f}% of the held-out masked positions ({measured['top1_distinct']} "
            "different tokens in all): it mostly ignores its input")


@torch.no_grad()
def inference_throughput(model, batch_size: int = 32, seq_len: int = 128, runs: int = 5, warmup: int = 1) -> dict:
    """Median wall time of a forward pass on one random batch (eval mode), and sequences per second."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    ids = torch.randint(min(1000, vocab // 2), vocab, (batch_size, seq_len), generator=g).to(device)
    times = []
    try:
        for i in range(warmup + runs):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(input_ids=ids)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    finally:
        model.train(was_training)
    median = statistics.median(times)
    return {"batch_s": median, "sequences_per_s": batch_size / median, "runs": runs, "batch_size": batch_size,
            "seq_len": seq_len}


def bert_mlm_forward_flops(config, seq_len: int = 128) -> float:
    """Multiply-add FLOPs (2 per MAC) of one masked-LM forward pass over one sequence, MLM head on every token."""
    H, F_, L, V, S = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size, seq_len
    per_token_layer = 2 * (4 * H * H + 2 * H * F_)  # Q, K, V, O and the two FFN matrices
    attention = 2 * 2 * S * H  # scores and weighted sum, per token per layer
    head = 2 * (H * H + H * V)
    return S * (L * (per_token_layer + attention) + head)


def compare_throughput(teacher, student, batch_size: int = 32, seq_len: int = 128, rounds: int = 5) -> dict:
    """Teacher and student timed in alternation (teacher, student, teacher, ...; one warm-up each), so that load
    from other processes hits both alike; medians of `rounds` forward passes each."""
    inference_throughput(teacher, batch_size, seq_len, runs=1, warmup=0)
    inference_throughput(student, batch_size, seq_len, runs=1, warmup=0)
    times = {"teacher": [], "student": []}
    for _ in range(rounds):
        for name, model in (("teacher", teacher), ("student", student)):
            times[name].append(inference_throughput(model, batch_size, seq_len, runs=1, warmup=0)["batch_s"])
    out = {}
    for name, values in times.items():
        median = statistics.median(values)
        out[name] = {"batch_s": median, "sequences_per_s": batch_size / median, "runs": rounds,
                     "batch_size": batch_size, "seq_len": seq_len, "interleaved": True}
    return out


FILL_MASK_SENTENCES = (
    "The capital of France is [MASK].",
    "The cat sat on the [MASK].",
    "He went to the [MASK] to buy some bread.",
    "The football match ended in a [MASK] after ninety minutes.",
    "She played the [MASK] in the school orchestra.",
)


@torch.no_grad()
def fill_mask_examples(models: dict, tokenizer, sentences=FILL_MASK_SENTENCES, top_k: int = 3) -> dict:
    """Top-k predictions of each model (name -> masked-LM) for the [MASK] of each sentence, and a context check:
    ``distinct_top1`` counts the different top-1 words over the sentences (as many as sentences: every prediction
    depends on its sentence), and a model is context-blind (``uses_context`` False) if it is the same everywhere."""
    rows = []
    for sentence in sentences:
        text = sentence.replace("[MASK]", tokenizer.mask_token)
        encoded = tokenizer(text, return_tensors="pt")
        position = int((encoded["input_ids"][0] == tokenizer.mask_token_id).nonzero()[0])
        row = {"sentence": sentence}
        for name, model in models.items():
            was_training = model.training
            model.eval()
            device = next(model.parameters()).device
            logits = model(**{k: v.to(device) for k, v in encoded.items()}).logits[0, position].float()
            model.train(was_training)
            probs, ids = logits.softmax(-1).topk(top_k)
            row[name] = [{"token": tokenizer.convert_ids_to_tokens(int(i)), "p": float(p)} for p, i in zip(probs, ids)]
        rows.append(row)
    distinct = {name: len({row[name][0]["token"] for row in rows}) for name in models}
    return {"examples": rows, "distinct_top1": distinct, "uses_context": {name: n > 1 for name, n in distinct.items()}}
