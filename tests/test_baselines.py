"""The baselines: ETD extraction, the KD objectives, WID + KD, Weight Distillation's generator."""

import copy

import pytest
import torch
from conftest import mlm_dataset, random_batch, tiny_teacher
from transformers import default_data_collator

from wid_hf import WIDConfig, WIDTrainingArguments
from wid_hf.baselines import (DistillationTrainer, WIDDistillationTrainer, WeightGenerator, extract_student,
                              layer_choice, select_layers, uniform_layers)


def labelled_batches(n=3):
    ds = mlm_dataset(n=8 * n)
    return [default_data_collator([ds[i] for i in range(j * 8, j * 8 + 8)]) for j in range(n)]


def logits(model, batch):
    with torch.no_grad():
        return model.eval()(**batch).logits


def test_layer_choices():
    assert uniform_layers(12, 4) == [2, 5, 8, 11] and uniform_layers(6, 3) == [1, 3, 5]
    assert layer_choice("lower", 6, 2) == [0, 1] and layer_choice("upper", 6, 2) == [4, 5]
    model = select_layers(tiny_teacher(layers=4), [0, 3])
    assert model.config.num_hidden_layers == 2 and len(model.bert.encoder.layer) == 2
    with pytest.raises(ValueError):
        select_layers(tiny_teacher(), [5])


@pytest.mark.parametrize("importance", ["random", "gradient"])
def test_etd_extracts_a_standard_student(importance):
    teacher = tiny_teacher(layers=4)
    before = copy.deepcopy(teacher.state_dict())
    student = extract_student(teacher, WIDConfig(target_hidden_size=24, target_intermediate_size=40),
                              importance=importance, batches=labelled_batches(), layers=[1, 3])
    c = student.config
    assert (c.hidden_size, c.intermediate_size, c.num_hidden_layers) == (24, 40, 2)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # teacher untouched
    assert torch.isfinite(logits(student, random_batch())).all()


def test_etd_at_full_width_is_the_teacher():
    teacher = tiny_teacher()
    student = extract_student(teacher, WIDConfig(target_hidden_size=48, target_intermediate_size=96),
                              importance="gradient", batches=labelled_batches())
    assert (logits(teacher, random_batch()) - logits(student, random_batch())).abs().max() < 1e-5


def test_gradient_importance_prefers_what_matters():
    # an FFN neuron whose output weights are zero cannot matter: ETD-Impt must drop it before any other
    teacher = tiny_teacher()
    with torch.no_grad():
        teacher.bert.encoder.layer[0].output.dense.weight[:, :10] = 0
    from wid_hf.baselines.etd import gradient_importance
    from wid_hf.model import WIDModel

    wid = WIDModel(copy.deepcopy(teacher), WIDConfig(target_ratio=0.5))
    scores = gradient_importance(wid, labelled_batches())
    assert scores["ffn_0"][:10].max() < scores["ffn_0"][10:].min()


def make_args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=8, learning_rate=1e-3,
                report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, logging_steps=1)
    base.update(kw)
    return base


@pytest.mark.parametrize("objective", ["logit", "hidden", "attention_mse", "attention_kl"])
def test_kd_objectives_are_zero_against_an_identical_teacher(tmp_path, objective):
    from transformers import TrainingArguments

    teacher = tiny_teacher()
    student = copy.deepcopy(teacher)
    trainer = DistillationTrainer(model=student, teacher=teacher, objective=objective, alpha=1.0,
                                  args=TrainingArguments(**make_args(tmp_path)), train_dataset=mlm_dataset(),
                                  data_collator=default_data_collator)
    batch = labelled_batches(1)[0]
    student.eval()
    assert trainer.compute_loss(student, batch).item() == pytest.approx(0.0, abs=1e-5)
    trainer.alpha = 0.5
    hard = student(**batch).loss.item()
    assert trainer.compute_loss(student, batch).item() == pytest.approx(0.5 * hard, rel=1e-4)


@pytest.mark.parametrize("objective", ["logit", "hidden", "attention_kl"])
def test_kd_trains_a_narrower_student(tmp_path, objective):
    from transformers import TrainingArguments

    teacher = tiny_teacher()
    student = extract_student(teacher, WIDConfig(target_hidden_size=24, target_intermediate_size=40),
                              importance="random")
    trainer = DistillationTrainer(model=student, teacher=teacher, objective=objective,
                                  args=TrainingArguments(**make_args(tmp_path)), train_dataset=mlm_dataset(),
                                  data_collator=default_data_collator)
    out = trainer.train()
    assert torch.isfinite(torch.tensor(out.training_loss))
    if objective == "hidden":  # the width projection is trained, and stays out of the saved student
        assert any(p is trainer.projection.weight for g in trainer.optimizer.param_groups for p in g["params"])
        assert not any("projection" in k for k in student.state_dict())


def test_wid_with_attention_transfer(tmp_path):
    teacher = tiny_teacher()
    trainer = WIDDistillationTrainer(
        model=copy.deepcopy(teacher), wid_config=WIDConfig(target_hidden_size=24, target_intermediate_size=40,
                                                           mask_interval=2, pruning_intervals=2),
        teacher=teacher, objective="attention_kl",
        args=WIDTrainingArguments(**make_args(tmp_path, max_steps=8, compactor_learning_rate=1e-2)),
        train_dataset=mlm_dataset(), data_collator=default_data_collator)
    trainer.train()
    assert trainer.wid_model.hard_masks_active and trainer.wid_model.kept_sizes()["hidden"] == 24
    student = trainer.save_student(str(tmp_path / "student"))
    diff = (logits(trainer.wid_model, random_batch()) - logits(student, random_batch())).abs().max()
    assert diff <= 1e-4


def test_wid_with_attention_transfer_under_torch_compile(tmp_path):
    """Trainer's ``torch_compile=True`` hands compute_loss the compiled wrapper: the KD objective must still find the
    WIDModel inside it (on the student path its query/key projections are expanded back to the teacher's width)."""
    losses = {}
    for compiled in (False, True):
        teacher = tiny_teacher()
        trainer = WIDDistillationTrainer(
            model=copy.deepcopy(teacher), wid_config=WIDConfig(target_hidden_size=24, target_intermediate_size=40,
                                                               mask_interval=2, pruning_intervals=2),
            teacher=teacher, objective="attention_kl",
            args=WIDTrainingArguments(**make_args(tmp_path / str(compiled), max_steps=8, torch_compile=compiled,
                                                  compactor_learning_rate=1e-2)),
            train_dataset=mlm_dataset(), data_collator=default_data_collator)
        trainer.train()
        assert trainer.wid_model.hard_masks_active
        losses[compiled] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses[True]) == 8 and losses[True] == pytest.approx(losses[False], abs=1e-3)


def test_weight_generator_trains_and_materializes():
    teacher = tiny_teacher(layers=4)
    generator = WeightGenerator(teacher, hidden_size=24, intermediate_size=40, num_hidden_layers=2)
    assert generator.layer_groups == [[0, 1], [2, 3]]
    batch = labelled_batches(1)[0]
    opt = torch.optim.AdamW([p for p in generator.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = generator(**batch).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert generator.projections["ffn"].grad is not None and generator.mix[0].grad is not None
    assert losses[-1] < losses[0]
    student = generator.materialize()
    assert student.config.hidden_size == 24 and student.config.num_hidden_layers == 2
    generator.eval()
    with torch.no_grad():
        assert torch.allclose(generator(**random_batch()).logits, logits(student, random_batch()), atol=1e-5)
