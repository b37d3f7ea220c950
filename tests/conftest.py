"""Shared fixtures and checks: tiny random BERT models built in the test, never downloaded."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")  # only benchmarks/tests read it, never the library


def tiny_config(hidden=48, heads=4, intermediate=96, layers=2, vocab=120, dropout=0.0, **kw) -> BertConfig:
    return BertConfig(
        hidden_size=hidden,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        vocab_size=vocab,
        max_position_embeddings=64,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        **kw,
    )


def tiny_teacher(seed=0, cls=BertForMaskedLM, **kw):
    torch.manual_seed(seed)
    model = cls(tiny_config(**kw))
    # A randomly initialised BERT has LayerNorm weight 1 / bias 0 and zero biases; perturb them so that a merge
    # that forgot to carry a bias or LayerNorm entry would be caught.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def random_batch(vocab=120, batch=3, length=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -3:] = 0  # padding, so attention masking is exercised
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": (torch.arange(length) > length // 2).long().expand(batch, -1)}


def perturb_compactors(wid_model, scale=0.2, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in wid_model.compactor_parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def logits(model, batch):
    with torch.no_grad():
        out = model(**batch)
    return out.logits if hasattr(out, "logits") else out[0]


def python_without_wid_hf() -> str:
    """The interpreter to run a check in a fresh process (tests assert that process never imports wid_hf)."""
    return sys.executable


@pytest.fixture
def teacher():
    return tiny_teacher()


SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_tokenizer(directory, vocab=120):
    """A real WordPiece BertTokenizerFast over a made-up vocabulary (w0, w1, ...), written to `directory`."""
    from transformers import BertTokenizer

    os.makedirs(directory, exist_ok=True)
    tokens = SPECIAL + [f"w{i}" for i in range(vocab - len(SPECIAL))]
    tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(tokens)})
    tokenizer.save_pretrained(directory)
    return tokenizer


def mlm_dataset(n=64, length=16, vocab=120, seed=0, static_labels=True):
    """Random token sequences; with `static_labels` the 15% masking is done once here (so runs that differ only in
    how they batch see identical inputs), otherwise a DataCollatorForLanguageModeling masks on the fly."""
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(len(SPECIAL), vocab, (n, length), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    data = {"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()}
    if static_labels:
        pick = torch.rand(ids.shape, generator=g) < 0.15
        pick[:, 0] = pick[:, -1] = False
        pick[:, 1] = True  # at least one target per row
        labels = torch.where(pick, ids, torch.full_like(ids, -100))
        data["labels"] = labels.tolist()
        data["input_ids"] = torch.where(pick, torch.full_like(ids, 4), ids).tolist()
    return Dataset.from_dict(data)
