"""Injection, masks, penalty, merge and save/load of the WID core, on tiny random BERTs."""

import json
import subprocess
import textwrap

import pytest
import torch
import torch.nn.functional as F
from conftest import logits, perturb_compactors, python_without_wid_hf, random_batch, tiny_teacher
from transformers import (
    BertForMaskedLM,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
)

from wid_hf import WIDConfig, WIDModel, get_wid_model
from wid_hf.layer import MaskedLayerNorm, WIDLinear
from wid_hf.mask_groups import select_kept
from wid_hf.utils import bert_mlm_parameter_count, count_parameters

FAST = dict(mask_interval=2, pruning_intervals=4)


def trained_wid(teacher, **cfg):
    """A WID model with random non-identity compactors, masks grown over a few intervals, then finalised."""
    model = get_wid_model(teacher, WIDConfig(**{**FAST, **cfg}))
    perturb_compactors(model)
    for step in range(0, model.pruning_end_step, 2):
        model.update_masks(step)
    model.finalize_masks()
    return model.eval()


# ---------------------------------------------------------------------------------------------- injection
@pytest.mark.parametrize(
    "cls", [BertForMaskedLM, BertModel, BertForSequenceClassification, BertForTokenClassification, BertForQuestionAnswering]
)
def test_identity_injection_reproduces_the_teacher(cls):
    teacher = tiny_teacher(cls=cls)
    batch = random_batch()
    before = logits(teacher, batch)
    model = get_wid_model(teacher, WIDConfig(target_ratio=0.5))
    after = logits(model, batch)
    assert (before - after).abs().max() <= 1e-5


def test_injection_reuses_teacher_tensors_and_only_adds_compactors():
    teacher = tiny_teacher()
    before = {id(p) for p in teacher.parameters()}
    model = get_wid_model(teacher, WIDConfig(target_ratio=0.5))
    new = [n for n, p in model.named_parameters() if id(p) not in before]
    assert new and all(".compactor" in n for n in new)
    assert {id(p) for p in model.inherited_parameters()} == before
    wrapped = [m for m in model.modules() if isinstance(m, WIDLinear)]
    # per layer: q, k, v, attention output, intermediate, output; plus head transform and decoder
    assert len(wrapped) == 2 * 6 + 2
    assert sum(isinstance(m, MaskedLayerNorm) for m in model.modules()) == 1 + 2 * 2 + 1
    # the decoder stays tied to the word embeddings during training
    assert model.base_model.cls.predictions.decoder.base_layer.weight is model.base_model.bert.embeddings.word_embeddings.weight


def test_sequence_classifier_pooler_is_wrapped():
    model = get_wid_model(tiny_teacher(cls=BertForSequenceClassification), WIDConfig(target_ratio=0.5))
    assert isinstance(model.base_model.bert.pooler.dense, WIDLinear)
    assert model.base_model.classifier.in_group == "pooler"


def test_injecting_twice_is_refused():
    model = get_wid_model(tiny_teacher(), WIDConfig(target_ratio=0.5))
    with pytest.raises(ValueError, match="already has WID compactors"):
        get_wid_model(model, WIDConfig(target_ratio=0.5))
    with pytest.raises(ValueError, match="already has WID compactors"):
        get_wid_model(model.base_model, WIDConfig(target_ratio=0.5))


def test_non_bert_models_are_refused_with_the_supported_list():
    gpt = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(TypeError, match="compresses BERT models.*BertForMaskedLM"):
        get_wid_model(gpt, WIDConfig(target_ratio=0.5))
    with pytest.raises(TypeError, match="compresses BERT models"):
        get_wid_model(torch.nn.Linear(3, 3), WIDConfig(target_ratio=0.5))


def test_unmergeable_widths_are_refused_at_injection():
    with pytest.raises(ValueError, match=r"divisible by 4.*\[20, 24\]"):
        get_wid_model(tiny_teacher(), WIDConfig(target_hidden_size=22, target_intermediate_size=50))


# ---------------------------------------------------------------------------------------------- masks
def test_select_kept_strategies():
    scores = torch.tensor([5.0, 1.0, 3.0, 2.0, 9.0, 8.0, 0.5, 7.0])
    assert select_kept(scores, 3).tolist() == [True, False, True, False, True, True, False, True]
    # "dim": one from each block of 4, the lowest in each
    assert select_kept(scores, 2, block_size=4).tolist() == [True, False, True, True, True, True, False, True]
    # "head": the whole block with the lowest sum (block 0: 11 < block 1: 24.5)
    assert select_kept(scores, 4, block_size=4, whole_blocks=True).tolist() == [False] * 4 + [True] * 4
    # ties are broken by index, deterministically
    assert select_kept(torch.ones(4), 2).tolist() == [False, False, True, True]


def test_update_masks_follows_the_schedule_and_keeps_heads_uniform():
    model = get_wid_model(tiny_teacher(), WIDConfig(target_hidden_size=24, target_intermediate_size=40, **FAST))
    perturb_compactors(model)
    assert model.update_masks(0)["hidden"] == 48
    sizes = model.update_masks(2)
    assert sizes["attention_0"] == sizes["attention_1"] == 48 - 4 * 3  # 6 per head // (4 // 2) = 3 per head
    assert sizes["ffn_0"] == 96 - 56 // 4
    for name in ("hidden", "attention_0", "attention_1"):
        assert model.masks.get(name).view(4, 12).sum(dim=1).tolist() == [9] * 4  # same count in every head
    final = model.update_masks(model.pruning_end_step)
    assert final["hidden"] == 24 and final["ffn_1"] == 40 and final["head"] == 24


def test_head_strategy_removes_whole_heads():
    model = get_wid_model(tiny_teacher(), WIDConfig(target_hidden_size=24, target_intermediate_size=40,
                                                    head_strategy="head", **FAST))
    perturb_compactors(model)
    model.finalize_masks()
    per_head = model.masks.get("attention_0").view(4, 12).sum(dim=1).tolist()
    assert sorted(per_head) == [0, 0, 12, 12]


def test_masked_layernorm_uses_kept_statistics():
    teacher = tiny_teacher()
    model = get_wid_model(teacher, WIDConfig(target_ratio=0.5, **FAST))
    model.update_masks(model.pruning_end_step)
    norm = model.base_model.bert.encoder.layer[0].output.LayerNorm
    x = torch.randn(2, 5, 48)
    kept = model.masks.kept_index("hidden")
    y = norm(x)
    ln = norm.base_layer
    expected = F.layer_norm(x[..., kept], (len(kept),), ln.weight[kept], ln.bias[kept], ln.eps)
    assert torch.allclose(y[..., kept], expected, atol=1e-5)
    model.finalize_masks()
    model.student_path = False  # the full path: teacher width, pruned dims exactly zero
    assert (norm(x)[..., ~model.masks.get("hidden")] == 0).all()
    model.student_path = True  # the student path: kept dims in, kept dims out, the same values
    assert torch.allclose(norm(x[..., kept]), expected, atol=1e-5)


def test_finalize_zeroes_pruned_entries_and_their_optimizer_state():
    model = get_wid_model(tiny_teacher(), WIDConfig(target_ratio=0.5, **FAST))
    model.compact_at_hard_masks = False  # whole compactors (as under DDP); compacting: test_student_path.py
    perturb_compactors(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(**random_batch()).logits.sum().backward()
    opt.step()
    model.finalize_masks(opt)
    for group in model.groups.values():
        pruned = ~model.masks.get(group.name)
        for p, how in group.penalised_tensors():
            sel = pruned[None, :] if how == "cols" else pruned[:, None] if how == "rows" else pruned
            sel = sel.expand_as(p)
            assert (p[sel] == 0).all()
            assert (opt.state[p]["exp_avg"][sel] == 0).all()
    # and they stay zero through further training under hard masks
    for _ in range(3):
        opt.zero_grad()
        model(**random_batch()).logits.sum().backward()
        opt.step()
    emb = model.base_model.bert.embeddings.LayerNorm.compactor
    assert (emb[~model.masks.get("hidden")] == 0).all()


def test_penalty_warmup_then_pruned_entries_only():
    model = get_wid_model(tiny_teacher(), WIDConfig(target_ratio=0.5, penalty_lambda=20.0, **FAST))
    perturb_compactors(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(**random_batch()).logits.sum().backward()
    layer = model.base_model.bert.encoder.layer[0].output.dense
    task_grad = layer.compactor_in.grad.clone()
    model.apply_penalty(step=0, optimizer=opt)  # warm-up interval: + warmup_l2 * W everywhere
    assert torch.allclose(layer.compactor_in.grad, task_grad + layer.compactor_in.detach())

    opt.step()
    opt.zero_grad()
    model.update_masks(2)
    model(**random_batch()).logits.sum().backward()
    task_grad = layer.compactor_in.grad.clone()
    momentum = opt.state[layer.compactor_in]["exp_avg"].clone()
    model.apply_penalty(step=3, optimizer=opt)  # steps 1..mask_interval are the warm-up
    pruned = ~model.masks.get("ffn_0")
    W = layer.compactor_in.detach()
    assert torch.equal(layer.compactor_in.grad[:, ~pruned], task_grad[:, ~pruned])
    assert torch.allclose(layer.compactor_in.grad[:, pruned], W[:, pruned])
    assert torch.equal(opt.state[layer.compactor_in]["exp_avg"][:, ~pruned], momentum[:, ~pruned])
    assert torch.allclose(opt.state[layer.compactor_in]["exp_avg"][:, pruned], 0.9 * momentum[:, pruned] + 1.9 * W[:, pruned])


def test_pruned_entries_decay_under_the_penalty():
    model = get_wid_model(tiny_teacher(), WIDConfig(target_ratio=0.5, **FAST))
    perturb_compactors(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.update_masks(model.pruning_end_step)
    start = model.pruned_norms()["ffn_0"]
    for step in range(model.pruning_end_step, model.pruning_end_step + 30):
        opt.zero_grad()
        model(**random_batch(), labels=random_batch()["input_ids"]).loss.backward()
        model.apply_penalty(step, opt)
        opt.step()
    assert model.pruned_norms()["ffn_0"] < 0.5 * start


# ---------------------------------------------------------------------------------------------- merge
SHAPES = [
    # hidden, heads, ffn, target hidden, target ffn, strategy
    (48, 4, 96, 24, 40, "dim"),
    (60, 6, 100, 42, 37, "dim"),  # head size 10, nothing a multiple of 64
    (96, 12, 200, 36, 90, "dim"),
    (64, 4, 128, 32, 70, "head"),
    (72, 6, 90, 36, 45, "head"),
]


@pytest.mark.parametrize("hidden, heads, ffn, t_hidden, t_ffn, strategy", SHAPES)
def test_merge_is_exact(hidden, heads, ffn, t_hidden, t_ffn, strategy):
    teacher = tiny_teacher(hidden=hidden, heads=heads, intermediate=ffn)
    model = trained_wid(teacher, target_hidden_size=t_hidden, target_intermediate_size=t_ffn, head_strategy=strategy)
    batch = random_batch()
    student = model.merge_and_unload(progressbar=False, probe_inputs=batch, atol=1e-4)
    assert type(student) is BertForMaskedLM
    assert (logits(model, batch) - logits(student, batch)).abs().max() <= 1e-4
    c = student.config
    assert (c.hidden_size, c.intermediate_size, c.tie_word_embeddings) == (t_hidden, t_ffn, False)
    assert c.num_attention_heads == (heads if strategy == "dim" else t_hidden // (hidden // heads))
    assert count_parameters(student) == bert_mlm_parameter_count(c, include_decoder=True)
    assert student.cls.predictions.decoder.weight.data_ptr() != student.bert.embeddings.word_embeddings.weight.data_ptr()
    assert not any("wid_hf" in type(m).__module__ for m in student.modules())


@pytest.mark.parametrize("cls", [BertModel, BertForSequenceClassification, BertForTokenClassification, BertForQuestionAnswering])
def test_merge_is_exact_for_task_models(cls):
    teacher = tiny_teacher(cls=cls)
    model = trained_wid(teacher, target_hidden_size=24, target_intermediate_size=40)
    batch = random_batch()
    student = model.merge_and_unload(progressbar=False, probe_inputs=batch, atol=1e-4)
    assert type(student) is cls
    ours, theirs = logits(model, batch), logits(student, batch)
    if cls is BertModel:  # the encoder's own output: at the student's width on the student path...
        assert ours.shape == theirs.shape
        model.student_path = False  # ...and at the teacher's on the full path, pruned dims exactly zero
        full, kept = logits(model, batch), model.masks.get("hidden")
        assert (full[..., ~kept] == 0).all()
        assert torch.equal(model.expand_to_teacher(ours)[..., ~kept], full[..., ~kept])
        assert (full[..., kept] - theirs).abs().max() <= 1e-4
    assert (ours - theirs).abs().max() <= 1e-4


@pytest.mark.parametrize("strategy", ["dim", "head"])
def test_merge_folds_in_float64_and_rounds_once(strategy):
    """A float32 model's student holds the float64 folds rounded to float32: what merging a float64 copy gives."""
    import copy

    from wid_hf.merge import merged_state_dict

    model = trained_wid(tiny_teacher(hidden=48, heads=4, intermediate=96), target_hidden_size=24,
                        target_intermediate_size=40, head_strategy=strategy)
    ours = merged_state_dict(model, progressbar=False)
    exact = merged_state_dict(copy.deepcopy(model).double(), progressbar=False)
    assert set(ours) == set(exact)
    for name, tensor in ours.items():
        assert tensor.dtype == torch.float32, name
        assert torch.equal(tensor, exact[name].float()), name


def test_merge_preserves_dtype():
    teacher = tiny_teacher().to(torch.bfloat16)
    model = trained_wid(teacher, target_ratio=0.5)
    student = model.merge_and_unload(progressbar=False)
    assert next(student.parameters()).dtype == torch.bfloat16


def test_merge_before_final_masks_is_reported_with_its_deviation():
    model = get_wid_model(tiny_teacher(), WIDConfig(target_ratio=0.5, **FAST))
    perturb_compactors(model)
    model.update_masks(model.pruning_end_step)
    with pytest.warns(UserWarning, match=r"before the masks are final.*differs .* by up to"):
        model.merge_and_unload(progressbar=False)
    assert model.last_merge_deviation > 1e-3


def test_merge_early_in_the_schedule_prunes_to_the_targets_and_reports():
    model = get_wid_model(tiny_teacher(), WIDConfig(target_hidden_size=24, target_intermediate_size=40, **FAST))
    perturb_compactors(model)
    model.update_masks(2)  # hidden 36, head 42, ffn 82: no standard BERT has these mixed widths
    before = model.kept_sizes()
    with pytest.warns(UserWarning, match="before the masks are final"):
        student = model.merge_and_unload(progressbar=False)
    assert (student.config.hidden_size, student.config.intermediate_size) == (24, 40)
    assert model.kept_sizes() == before  # the WID model keeps its own masks


def test_merged_student_loads_in_a_process_without_wid_hf(tmp_path):
    model = trained_wid(tiny_teacher(), target_hidden_size=24, target_intermediate_size=40)
    batch = random_batch()
    expected = logits(model, batch)
    model.merge_and_unload(progressbar=False).save_pretrained(tmp_path / "student")
    torch.save({"batch": batch, "expected": expected}, tmp_path / "probe.pt")
    script = textwrap.dedent(
        f"""
        import sys, torch
        from transformers import BertForMaskedLM
        probe = torch.load({str(tmp_path / "probe.pt")!r})
        student = BertForMaskedLM.from_pretrained({str(tmp_path / "student")!r}).eval()
        with torch.no_grad():
            got = student(**probe["batch"]).logits
        assert "wid_hf" not in sys.modules, "the student must not need wid_hf"
        assert student.config.hidden_size == 24 and not student.config.tie_word_embeddings
        print((got - probe["expected"]).abs().max().item())
        """
    )
    out = subprocess.run([python_without_wid_hf(), "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip().splitlines()[-1]) <= 1e-4


# ---------------------------------------------------------------------------------------------- save / load
def test_wid_state_round_trips_exactly(tmp_path):
    teacher = tiny_teacher()
    model = get_wid_model(teacher, WIDConfig(target_ratio=0.5, **FAST))
    perturb_compactors(model)
    with torch.no_grad():
        model.base_model.bert.encoder.layer[0].output.dense.base_layer.weight.add_(0.5)  # inherited weights train too
    model.update_masks(4)
    model.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "wid_config.json").read_text())
    assert meta["teacher"]["hidden_size"] == 48 and meta["wid_config"]["target_hidden_size"] == 24

    loaded = WIDModel.from_pretrained(tiny_teacher(), tmp_path).eval()
    batch = random_batch()
    assert torch.equal(logits(model.eval(), batch), logits(loaded, batch))
    for name in model.groups:
        assert torch.equal(model.masks.get(name), loaded.masks.get(name))
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_compactor_only_save_loads_onto_the_teacher(tmp_path):
    model = get_wid_model(tiny_teacher(), WIDConfig(target_ratio=0.5, **FAST))
    perturb_compactors(model)
    model.save_pretrained(tmp_path, include_inherited=False)
    loaded = WIDModel.from_pretrained(tiny_teacher(), tmp_path).eval()
    assert torch.equal(logits(model.eval(), random_batch()), logits(loaded, random_batch()))


def test_corrupt_or_mismatched_checkpoints_are_clear_errors(tmp_path):
    model = get_wid_model(tiny_teacher(), WIDConfig(target_ratio=0.5, **FAST))
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="made for a teacher"):
        WIDModel.from_pretrained(tiny_teacher(hidden=64), tmp_path)
    weights = tmp_path / "wid_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        WIDModel.from_pretrained(tiny_teacher(), tmp_path)
    with pytest.raises(FileNotFoundError, match="No WID checkpoint directory"):
        WIDModel.from_pretrained(tiny_teacher(), tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no wid_config.json"):
        WIDModel.from_pretrained(tiny_teacher(), tmp_path / "empty")


def test_student_parameter_count_predicts_the_merge():
    model = trained_wid(tiny_teacher(), target_hidden_size=24, target_intermediate_size=40)
    assert model.student_parameter_count() == count_parameters(model.merge_and_unload(progressbar=False))
    full = tiny_teacher()
    full.config.tie_word_embeddings = False
    assert model.teacher_parameter_count() == bert_mlm_parameter_count(full.config, include_decoder=True)


def test_wid_step_runs_the_schedule_then_hardens():
    model = get_wid_model(tiny_teacher(), WIDConfig(target_hidden_size=24, target_intermediate_size=40, **FAST))
    perturb_compactors(model)
    assert (model.pruning_end_step, model.hard_mask_step) == (8, 10)
    for step in range(1, 10):
        model.wid_step(step)
        assert not model.hard_masks_active
    assert model.kept_sizes()["ffn_0"] == 40
    model.wid_step(10)
    assert model.hard_masks_active and model.kept_sizes()["hidden"] == 24
