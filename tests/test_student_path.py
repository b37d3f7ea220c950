"""Training cost without changing the method: the student path under hard masks (every layer at the student's
widths) and the MLM head at masked positions only must train exactly as the full path and the full head do."""

import copy
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import perturb_compactors, random_batch, tiny_teacher
from test_trainer import final_state, make_trainer
from transformers import BertForMaskedLM

import wid_hf.layer as layer
from wid_hf import WIDConfig, get_wid_model
from wid_hf.mlm import masked_lm_loss, mlm_head_at

SHAPE = dict(target_hidden_size=24, target_intermediate_size=40, mask_interval=2, pruning_intervals=2)
# The exactness checks also run on a GPU: WID_HF_TEST_DEVICE=cuda pytest tests/test_student_path.py
DEVICE = torch.device(os.environ.get("WID_HF_TEST_DEVICE", "cpu"))


def mlm_batch(seed=1, vocab=120, **shape):
    batch = random_batch(seed=seed, vocab=vocab, **shape)
    g = torch.Generator().manual_seed(seed + 100)
    labels = batch["input_ids"].clone()
    labels[torch.rand(labels.shape, generator=g) > 0.3] = -100
    labels[batch["attention_mask"] == 0] = -100
    return {k: v.to(DEVICE) for k, v in {**batch, "labels": labels}.items()}


def hard_wid(strategy):
    model = get_wid_model(tiny_teacher(), WIDConfig(head_strategy=strategy, **SHAPE))
    perturb_compactors(model, scale=0.05)
    model.finalize_masks()
    return model.to(DEVICE).train()


def train_steps(model, steps=5):
    """What WIDTrainer does per optimizer step: masked-LM loss, clipping, WID's step, AdamW (its epsilon 1e-6)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, eps=1e-6)
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        loss, _ = masked_lm_loss(model, mlm_batch(seed=step))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        model.wid_step(10_000 + step, optimizer)
        optimizer.step()
    return model


@pytest.mark.parametrize("strategy", ["dim", "head"])
def test_student_path_trains_exactly_like_the_full_path(strategy):
    student_path = hard_wid(strategy)
    full_path = copy.deepcopy(student_path)
    full_path.student_path = False
    batch = {k: v for k, v in mlm_batch().items() if k != "labels"}
    with torch.no_grad():  # the student path runs at the student's widths...
        hidden = student_path.base_model.bert(**batch).last_hidden_state
    assert hidden.shape[-1] == 24

    assert student_path.compactors_compacted and not full_path.compactors_compacted
    train_steps(student_path)
    train_steps(full_path)
    # ...and every parameter (compacted compactors compared at their whole shape), mask and the merged student
    # end up the same
    expected = full_path.wid_state_dict()
    for name, value in student_path.wid_state_dict().items():
        assert (value.float() - expected[name].float()).abs().max() <= 1e-6, name
    assert all(torch.equal(student_path.masks.get(g), full_path.masks.get(g)) for g in student_path.groups)
    merged_a = student_path.merge_and_unload(progressbar=False).state_dict()
    merged_b = full_path.merge_and_unload(progressbar=False).state_dict()
    for name, value in merged_a.items():
        assert (value - merged_b[name]).abs().max() <= 1e-6, name


def test_compacting_mid_training_changes_nothing_and_frees_the_pruned_slices():
    """Soft masks -> the hard-mask step inside an AdamW loop (state present): compacting there (the default) trains
    exactly like keeping whole compactors, with the pruned rows/columns gone from parameters and Adam's state."""
    def run(compact):
        torch.manual_seed(0)
        model = get_wid_model(tiny_teacher(), WIDConfig(**SHAPE))
        model.compact_at_hard_masks = compact
        perturb_compactors(model, scale=0.05)
        model.to(DEVICE).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, eps=1e-6)
        for step in range(1, model.hard_mask_step + 4):  # three steps past the switch
            optimizer.zero_grad()
            masked_lm_loss(model, mlm_batch(seed=step))[0].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            model.wid_step(step, optimizer)
            optimizer.step()
        return model, optimizer

    compacted, optimizer = run(True)
    whole, _ = run(False)
    assert compacted.compactors_compacted and compacted.masks.is_hard and not whole.compactors_compacted
    layer0 = compacted.base_model.bert.encoder.layer[0]
    ffn_in = layer0.intermediate.dense
    assert ffn_in.compactor_in.shape == (48, 24) and ffn_in.compactor_out.shape == (40, 96)
    assert optimizer.state[ffn_in.compactor_out]["exp_avg_sq"].shape == (40, 96)
    expected = whole.wid_state_dict()
    got = compacted.wid_state_dict()
    assert got[[k for k in got if k.endswith("intermediate.dense.compactor_out")][0]].shape == (96, 96)
    for name, value in got.items():
        assert (value.float() - expected[name].float()).abs().max() <= 1e-6, name
    merged_a = compacted.merge_and_unload(progressbar=False).state_dict()
    merged_b = whole.merge_and_unload(progressbar=False).state_dict()
    assert all((v.float() - merged_b[k].float()).abs().max() <= 1e-6 for k, v in merged_a.items())
    # the full path needs whole compactors: switching to it expands them (zeros in pruned entries)
    compacted.student_path = False
    assert not compacted.compactors_compacted and ffn_in.compactor_out.shape == (96, 96)
    assert all(torch.equal(v, got[k]) for k, v in compacted.wid_state_dict().items())


def test_an_optimizer_with_factored_state_keeps_whole_compactors():
    """State not shaped like its parameter (Adafactor's row/column factors, 8-bit blocks) cannot be sliced: the
    automatic compaction keeps whole compactors and says so; an explicit call refuses."""
    model = get_wid_model(tiny_teacher(), WIDConfig(**SHAPE))
    param = model.base_model.bert.encoder.layer[0].intermediate.dense.compactor_out
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.state[param]["row_factor"] = torch.ones(param.shape[0])
    model.finalize_masks(optimizer)
    assert model.masks.is_hard and not model.compactors_compacted and param.shape == (96, 96)
    with pytest.raises(ValueError, match="factored or quantized"):
        model.compact_compactors(optimizer)
    model.compact_compactors()  # without that optimizer it is fine
    assert model.compactors_compacted


def test_compact_compactors_refuses_soft_masks_and_the_full_path_refuses_compacted_compactors():
    model = get_wid_model(tiny_teacher(), WIDConfig(**SHAPE)).to(DEVICE)
    with pytest.raises(RuntimeError, match="needs hard masks"):
        model.compact_compactors()
    model.finalize_masks()
    assert model.compactors_compacted
    model.masks.student_path = False  # behind the model's back: the layers say what to do
    with pytest.raises(RuntimeError, match="expand_compactors"):
        model(**{k: v for k, v in mlm_batch().items() if k != "labels"})


@pytest.mark.parametrize("plan", ["fold", "tokens", "fold_wl", "fold_rw"])
def test_every_product_order_computes_the_same(monkeypatch, plan):
    model = hard_wid("dim")
    batch = {k: v for k, v in mlm_batch().items() if k != "labels"}
    with torch.no_grad():
        expected = model(**batch).logits
    real = layer.chain_costs
    monkeypatch.setattr(layer, "chain_costs", lambda *a: {k: int(k != plan) for k in real(*a)})
    with torch.no_grad():
        got = model(**batch).logits
    assert (got - expected).abs().max() <= 1e-5


def test_the_cheapest_order_is_chosen():
    # the decoder at a few masked positions: per token beats forming a vocabulary-sized weight
    decoder = layer.chain_costs(150, None, torch.empty(30522, 384), torch.empty(384, 192))
    assert min(decoder, key=decoder.get) == "tokens"
    # a half-width BERT-base layer at 8x128 tokens: fold R'·W·L' once, then the student-sized product
    dense = layer.chain_costs(1024, torch.empty(384, 768), torch.empty(768, 768), torch.empty(768, 384))
    assert min(dense, key=dense.get) == "fold"


def training_model(which):
    """A plain teacher, or a WID model while pruning (soft masks) or under hard masks, on DEVICE."""
    if which == "plain":
        return tiny_teacher().train().to(DEVICE)
    model = get_wid_model(tiny_teacher(), WIDConfig(**SHAPE)).train()
    perturb_compactors(model, scale=0.05)
    model.update_masks(4) if which == "wid-soft" else model.finalize_masks()
    assert model.masks.is_hard == (which == "wid-hard")
    return model.to(DEVICE)


@pytest.mark.parametrize("which", ["plain", "wid-soft", "wid-hard"])
def test_masked_positions_only_head_gives_the_same_loss_and_gradients(which):
    model = training_model(which)
    batch = mlm_batch()
    reference = model(**batch).loss
    reference.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    loss, outputs = masked_lm_loss(model, batch)
    loss.backward()
    assert outputs.logits.shape == (int((batch["labels"] != -100).sum()), 120)
    assert abs(loss.item() - reference.item()) <= 1e-6
    for name, grad in expected.items():
        assert (grad - dict(model.named_parameters())[name].grad).abs().max() <= 1e-6, name


@pytest.mark.parametrize("which", ["plain", "wid-soft", "wid-hard"])
def test_a_training_forward_compiles_to_one_graph(which):
    """Under torch.compile the forward is one graph (fullgraph: a graph break raises): the layers read the masks'
    Python caches, filled when a mask changes, and the head's positions arrive as an index found outside the model,
    so nothing in the forward syncs with the device. Compiled, the loss and gradients are the eager ones."""
    model = training_model(which)
    torch._dynamo.reset()
    # aot_eager: Dynamo's capture and AOTAutograd's tracing of the backward, without code generation (fast)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    for seed in (1, 2):  # a second batch masks a different number of positions
        batch = mlm_batch(seed=seed)
        reference, _ = masked_lm_loss(model, batch)
        reference.backward()
        expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()
        loss, _ = masked_lm_loss(compiled, batch)
        loss.backward()
        assert abs(loss.item() - reference.item()) <= 1e-6
        for name, grad in expected.items():
            assert torch.allclose(grad, dict(model.named_parameters())[name].grad, atol=1e-6), name
        model.zero_grad()


def test_mlm_head_at_is_undone_and_refuses_models_without_a_head():
    model = tiny_teacher().to(DEVICE)
    batch = {k: v for k, v in mlm_batch().items() if k != "labels"}
    picked = torch.zeros(3, 12, dtype=torch.bool).index_fill_(1, torch.tensor([2]), True).to(DEVICE)
    with mlm_head_at(model, picked):
        assert model(**batch).logits.shape == (3, 120)
    assert model(**batch).logits.shape == (3, 12, 120)
    with pytest.raises(TypeError, match="no BERT masked-LM head"):
        with mlm_head_at(model.bert, torch.ones(3, 12, dtype=torch.bool)):
            pass


def test_held_out_loss_is_the_full_heads():
    from datasets import Dataset

    from wid_hf.evaluation import evaluate_mlm

    model = tiny_teacher().to(DEVICE)
    batch = mlm_batch()
    got = evaluate_mlm(model, Dataset.from_dict({k: v.tolist() for k, v in batch.items()}), progressbar=False)
    with torch.no_grad():  # evaluate_mlm feeds input ids and the attention mask
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    picked = batch["labels"] != -100
    assert abs(got["mlm_loss"] - F.cross_entropy(logits[picked], batch["labels"][picked]).item()) <= 1e-5


@pytest.mark.parametrize("resume_compacted", [True, False])
def test_resume_mid_hard_phase_is_exact(tmp_path, resume_compacted):
    # FAST schedule of test_trainer: hard masks from step 10 of 16; checkpoint at 12, inside the hard phase
    full = make_trainer(tmp_path / "a", save_strategy="steps", save_steps=12)
    full.train()
    assert full.wid_model.masks.is_hard and full.wid_model.student_path and full.wid_model.compactors_compacted
    expected = full.wid_model.wid_state_dict()
    checkpoint = tmp_path / "a" / "out" / "checkpoint-12"
    assert os.path.isfile(checkpoint / "wid_model.safetensors")
    resumed = make_trainer(tmp_path / "a", save_strategy="steps", save_steps=12)
    # False: the compacted run's Adam state (kept slices) is fitted to whole compactors on resume
    resumed.wid_model.compact_at_hard_masks = resume_compacted
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.wid_model.compactors_compacted == resume_compacted
    got = resumed.wid_model.wid_state_dict()
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert torch.allclose(value.float(), got[name].float(), atol=1e-6, rtol=0), name


def test_a_plain_student_is_untouched_by_the_hook():
    student = BertForMaskedLM(tiny_teacher().config).to(DEVICE)
    assert not student.cls._forward_pre_hooks
    loss, _ = masked_lm_loss(student, mlm_batch())
    assert not student.cls._forward_pre_hooks and torch.isfinite(loss)


@pytest.mark.parametrize("state", ["soft", "hard", "hard-full-path"])
def test_folding_once_per_optimizer_step_gives_the_same_gradients(monkeypatch, state):
    """Gradient accumulation over 3 micro-batches: with `accumulating` each layer's R·W·L is formed once per
    optimizer step instead of 3 times, and every parameter gets the same gradient as plain accumulation."""
    model = get_wid_model(tiny_teacher(), WIDConfig(**SHAPE))
    perturb_compactors(model, scale=0.05)
    model.update_masks(4) if state == "soft" else model.finalize_masks()
    model.student_path = state != "hard-full-path"
    model.to(DEVICE).train()
    folds = []
    real_fold = layer.fold_chain
    monkeypatch.setattr(layer, "fold_chain", lambda *a: folds.append(1) or real_fold(*a))
    batches = [mlm_batch(seed=s, batch=8, length=32) for s in (1, 2, 3)]  # enough tokens that folding pays
    total = sum(int((b["labels"] != -100).sum()) for b in batches)

    def accumulate(reuse):
        model.zero_grad(set_to_none=True)
        folds.clear()
        for i, batch in enumerate(batches):
            with model.accumulating(i == len(batches) - 1, len(batches)) if reuse else torch.enable_grad():
                (masked_lm_loss(model, batch, reduction="sum")[0] / total).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, len(folds)

    expected, plain_folds = accumulate(reuse=False)
    got, reuse_folds = accumulate(reuse=True)
    # every layer that folded per micro-batch folds once per step (a few more fold, their fold now paid once)
    layers = sum(isinstance(m, layer.WIDLinear) for m in model.modules())
    assert 0 < plain_folds / 3 <= reuse_folds <= layers
    assert set(got) == set(expected)
    for name, grad in expected.items():
        assert (grad - got[name]).abs().max() <= 1e-6, name
    assert model.masks.fold_reuse is None and "_fold_reuse" not in model.__dict__  # nothing left for the next step


def test_a_failed_micro_batch_leaves_no_folds_behind():
    model = get_wid_model(tiny_teacher(), WIDConfig(**SHAPE)).to(DEVICE).train()
    with pytest.raises(RuntimeError, match="boom"):
        with model.accumulating(last=False):
            masked_lm_loss(model, mlm_batch())[0].backward()
            raise RuntimeError("boom")
    assert model.masks.fold_reuse is None and "_fold_reuse" not in model.__dict__


def test_trainer_folds_once_per_step_with_the_same_result(tmp_path, monkeypatch):
    folds = {}
    real_fold = layer.fold_chain

    def run(name, **kw):
        count = []
        monkeypatch.setattr(layer, "fold_chain", lambda *a: count.append(1) or real_fold(*a))
        trainer = make_trainer(tmp_path / name, per_device_train_batch_size=2, gradient_accumulation_steps=4, **kw)
        trainer.train()
        folds[name] = len(count)
        return final_state(trainer)

    once, every = run("once"), run("every", wid_fold_once_per_step=False)
    layers = sum(isinstance(m, layer.WIDLinear) for m in get_wid_model(tiny_teacher(), WIDConfig(**SHAPE)).modules())
    assert folds["once"] <= 16 * layers < folds["every"]  # at most once per layer and optimizer step (16 steps)
    # The gradients agree to 1e-6 (above), but folding where the plain order did not rounds differently, and 16
    # AdamW steps at compactor lr 1e-2 amplify that (Adam normalises tiny gradients); masks (in the state) must match.
    for name, value in once.items():
        assert (value.float() - every[name].float()).abs().max() <= 5e-4, name


def test_folding_once_counts_the_fold_once_when_choosing_the_order():
    """An FFN-like chain (out 64, in 16) over 32 tokens: folding only R·W is cheapest per micro-batch, but with the
    full fold paid once over 4 micro-batches folding everything is; the result is the same either way."""
    g = torch.Generator().manual_seed(0)
    right, weight, left, bias = (torch.randn(*shape, generator=g, requires_grad=True)
                                 for shape in ((64, 64), (64, 16), (16, 16), (64,)))
    x = torch.randn(32, 16, generator=g)
    costs = layer.chain_costs(32, right, weight, left)
    assert min(costs, key=costs.get) == "fold_rw"
    expected = layer.apply_chain(x, right, weight, left, bias)
    for micro_batches, folds in ((1, 0), (4, 1)):
        reuse = layer.FoldReuse(micro_batches)
        got = reuse.linear(torch.nn.Identity(), x, lambda: (right, weight, left, bias))
        assert reuse.folds == folds and torch.allclose(got, expected, atol=1e-4, rtol=1e-5)
