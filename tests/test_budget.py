"""Budget mode (WIDConfig.for_budget): Taylor scores, a linear decay that reaches exactly zero, monotone masks, and
a short run that reaches its targets, merges exactly and resumes exactly."""

import os

import pytest
import torch
from conftest import mlm_dataset, random_batch, tiny_teacher, tiny_tokenizer
from transformers import DataCollatorForLanguageModeling, TrainerCallback, default_data_collator

from wid_hf import WIDConfig, WIDTrainer, WIDTrainingArguments, get_wid_model
from wid_hf import pruner
from wid_hf.mask_groups import broadcast_mask
from wid_hf.schedule import pruned_count


def batch_with_labels(seed=1):
    batch = random_batch(seed=seed)
    labels = batch["input_ids"].clone()
    labels[:, ::2] = -100
    return {**batch, "labels": labels}


def loss_of(model, batch):
    with torch.no_grad():
        return float(model(**batch).loss)


def test_taylor_score_is_the_first_order_change_of_the_loss_when_an_index_goes():
    torch.manual_seed(0)
    # float64, so that a finite difference resolves the derivative
    model = get_wid_model(tiny_teacher().double(), WIDConfig(target_ratio=0.5, mask_scoring="taylor")).eval()
    batch = batch_with_labels()
    model.zero_grad()
    model(**batch).loss.backward()
    pruner.accumulate_taylor(model)
    base = loss_of(model, batch)
    for name in ("hidden", "ffn_0", "attention_1"):
        group = model.groups[name]
        scores = model.masks.score(name) * model.wid_config.taylor_window  # one step of the moving average
        exact, full, predicted = [], [], []
        for j in range(0, group.size, max(1, group.size // 8)):
            saved = [(p, p.detach().clone()) for p, _ in group.compactor_entries()]

            def scale_index(factor):
                with torch.no_grad():
                    for (p, how), (_, original) in zip(group.compactor_entries(), saved):
                        where = broadcast_mask(torch.arange(group.size) == j, how)
                        p.copy_(torch.where(where, original * factor, original))

            eps = 1e-4
            scale_index(1 + eps)  # scale index j's compactor entries a little either way: the derivative
            up = loss_of(model, batch)
            scale_index(1 - eps)
            exact.append((up - loss_of(model, batch)) / (2 * eps))
            scale_index(0.0)  # remove index j
            full.append(abs(loss_of(model, batch) - base))
            scale_index(1.0)
            predicted.append(float(scores[j]))
        # d(loss)/d(scale) at scale 1 is sum(G * W): the score is its absolute value
        assert torch.allclose(torch.tensor(exact).abs(), torch.tensor(predicted), rtol=1e-4, atol=1e-9), name
        # and removing the index changes the loss by about the score (first order; loose for whole dims)
        ratio = torch.tensor(full) / torch.tensor(predicted).clamp(min=1e-9)
        assert float(ratio.median()) > 0.3 and float(ratio.median()) < 3.0, (name, ratio)


def test_initial_taylor_scores_are_the_teachers_importance_averaged_over_batches():
    from wid_hf.baselines.etd import gradient_importance

    model = get_wid_model(tiny_teacher(dropout=0.1), WIDConfig(target_ratio=0.5, mask_scoring="taylor"))
    model.train()
    batches = [batch_with_labels(seed) for seed in (1, 2, 3)]
    expected = {}
    model.eval()  # by hand: |diagonal| of each compactor's gradient (identity compactors), summed, batch mean
    for batch in batches:
        model.zero_grad()
        model(**batch).loss.backward()
        for name, group in model.groups.items():
            for param, _ in group.compactor_entries():
                expected[name] = expected.get(name, 0) + param.grad.diagonal().abs() / len(batches)
    model.zero_grad(set_to_none=True)
    model.train()
    rng = torch.get_rng_state()
    pruner.initial_taylor_scores(model, batches, lambda m, b: m(**b).loss)
    assert torch.equal(rng, torch.get_rng_state()) and model.training
    assert all(p.grad is None for p in model.parameters())
    assert set(expected) == set(model.masks.group_names)
    etd = gradient_importance(model, batches)  # ETD-Impt's importance: the same scores, summed
    for name, score in expected.items():
        assert float(score.max()) > 0
        assert torch.allclose(model.masks.score(name), score, rtol=1e-5, atol=0), name
        assert torch.allclose(etd[name] / len(batches), score, rtol=1e-5, atol=0), name
    # a training step's scores then fold into that average (momentum 0.9), as from any earlier state
    before = {name: model.masks.score(name).clone() for name in expected}
    model.zero_grad()
    model(**batches[0]).loss.backward()
    step = pruner.taylor_step_scores(model)
    pruner.accumulate_taylor(model)
    for name in expected:
        assert torch.allclose(model.masks.score(name), 0.9 * before[name] + 0.1 * step[name], rtol=1e-6), name
    with pytest.raises(ValueError, match="mask_scoring='taylor'"):
        WIDConfig(target_ratio=0.5, taylor_init_batches=4)


def test_taylor_window_sets_each_steps_weight_in_the_moving_average():
    batch = batch_with_labels()
    for window in (1, 4):
        model = get_wid_model(tiny_teacher(), WIDConfig(target_ratio=0.5, mask_scoring="taylor", taylor_window=window))
        for name in model.masks.group_names:
            model.masks.score(name).fill_(1.0)
        model.zero_grad()
        model(**batch).loss.backward()
        step = pruner.taylor_step_scores(model)
        pruner.accumulate_taylor(model)
        for name, score in step.items():
            expected = (1 - 1 / window) + score / window  # window 1: this step's scores only
            assert torch.allclose(model.masks.score(name), expected, rtol=1e-6), (window, name)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="taylor_window"):
            WIDConfig(target_ratio=0.5, mask_scoring="taylor", taylor_window=bad)


def test_taylor_per_compactor_scores_each_compactor_on_its_own():
    batch = batch_with_labels()
    scores = {}
    for per_compactor in (False, True):
        torch.manual_seed(0)
        model = get_wid_model(tiny_teacher(), WIDConfig(target_ratio=0.5, mask_scoring="taylor",
                                                        taylor_per_compactor=per_compactor))
        with torch.no_grad():  # compactors away from the identity, so that every entry of an index counts
            for group in model.groups.values():
                for param, _ in group.compactor_entries():
                    param.add_(0.05 * torch.randn_like(param))
        model.zero_grad()
        model(**batch).loss.backward()
        scores[per_compactor] = pruner.taylor_step_scores(model)
        if per_compactor:  # by hand: each compactor's |sum of G * W| for the index, summed over the group
            for name, group in model.groups.items():
                expected = sum((p.grad * p).sum(dim=1 if how == "rows" else 0).abs()
                               for p, how in group.compactor_entries())
                assert torch.allclose(scores[True][name], expected, rtol=1e-5, atol=1e-12), name
    for name in scores[False]:  # the group form can cancel, this one cannot: never smaller
        assert bool((scores[True][name] >= scores[False][name] - 1e-7).all()), name
    assert not torch.allclose(scores[True]["hidden"], scores[False]["hidden"])  # the hidden group has many compactors


def test_wid_trainer_starts_the_scores_from_the_teacher_without_touching_the_runs_rng(tmp_path):
    seen = {}

    class AtStart(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            seen[key] = (torch.get_rng_state(), model.masks.score("ffn_0").clone())

    # the collator draws its masks from the global RNG: the scoring batches' masks must not shift the run's
    collator = DataCollatorForLanguageModeling(tiny_tokenizer(tmp_path / "tok"), mlm_probability=0.15)
    for key, batches in (("scored", 2), ("zero", 0)):
        trainer = budget_trainer(tmp_path / key, steps=8, taylor_init_batches=batches, collator=collator)
        trainer.add_callback(AtStart())
        trainer.train()
    assert float(seen["scored"][1].min()) > 0 and not seen["zero"][1].any()
    assert torch.equal(seen["scored"][0], seen["zero"][0])  # data order and dropout draw as without the scoring


def test_linear_decay_is_exactly_zero_at_the_hard_mask_step_and_clears_optimizer_state():
    config = WIDConfig(target_ratio=0.5, mask_interval=2, pruning_intervals=2, decay="linear", warmup_l2=0.0)
    model = get_wid_model(tiny_teacher(), config)
    hard = model.hard_mask_step
    model.update_masks(2)
    group = model.groups["ffn_0"]
    pruned = ~model.masks.get("ffn_0")
    param, how = next(iter(group.compactor_entries()))
    where = broadcast_mask(pruned, how).expand_as(param)
    start = param.detach().clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(**batch_with_labels()).loss.backward()
    optimizer.step()  # creates Adam state
    with torch.no_grad():
        param.copy_(start)
    for step in range(3, hard):
        pruner.apply_decay(model, step, optimizer)
        expected = start * (hard - step) / (hard - 2)  # linear from the value at the first decay step
        assert torch.allclose(param[where], expected[where], atol=1e-6), step
        assert torch.equal(param[~where], start[~where])  # kept entries untouched
        for value in optimizer.state[param].values():
            if torch.is_tensor(value) and value.shape == param.shape:
                assert float(value[where].abs().max()) == 0.0
    pruner.apply_decay(model, hard, optimizer)
    assert float(param[where].abs().max()) == 0.0  # exactly zero, before finalize_masks does anything


def test_monotone_masks_never_unprune():
    def pruned_sets(monotone):
        config = WIDConfig(target_ratio=0.5, mask_interval=1, pruning_intervals=6, mask_scoring="taylor",
                           monotone_masks=monotone)
        model = get_wid_model(tiny_teacher(), config)
        g = torch.Generator().manual_seed(0)
        sets = []
        for step in range(1, 7):
            for name in model.groups:  # fresh, unrelated importances at every update
                model.masks.score(name).copy_(torch.rand(model.groups[name].size, generator=g))
            model.update_masks(step)
            sets.append({name: set((~model.masks.get(name)).nonzero().flatten().tolist()) for name in model.groups})
        return sets

    def nested(sets):
        return all(before[n] <= after[n] for before, after in zip(sets, sets[1:]) for n in before)

    assert nested(pruned_sets(monotone=True))
    assert not nested(pruned_sets(monotone=False))  # the reference re-selects from scratch: the test can fail


def budget_trainer(out, steps=40, head_strategy="dim", taylor_init_batches=None, collator=None, **kw):
    args = WIDTrainingArguments(output_dir=str(out), per_device_train_batch_size=8, max_steps=steps, learning_rate=1e-3,
                                compactor_learning_rate=1e-3, logging_steps=1, report_to=[], seed=0, data_seed=0,
                                use_cpu=True, disable_tqdm=True, dataloader_num_workers=0, **kw)
    init = {} if taylor_init_batches is None else dict(taylor_init_batches=taylor_init_batches)
    config = WIDConfig.for_budget(steps, target_hidden_size=24, target_intermediate_size=40, head_strategy=head_strategy,
                                  **init)
    return WIDTrainer(model=tiny_teacher(), wid_config=config, args=args,
                      train_dataset=mlm_dataset(static_labels=collator is None),
                      data_collator=collator or default_data_collator)


@pytest.mark.parametrize("strategy", ["dim", "head"])
def test_budget_mode_reaches_its_targets_early_and_merges_exactly(tmp_path, strategy):
    config = WIDConfig.for_budget(40, target_ratio=0.5)
    assert (config.pruning_start, config.mask_interval, config.pruning_intervals) == (0, 2, 8)
    assert (config.taylor_init_batches, config.taylor_per_compactor) == (16, True)
    trainer = budget_trainer(tmp_path, head_strategy=strategy)
    model = trainer.wid_model
    assert model.hard_mask_step <= 0.6 * 40  # the student trains at its final shape for the rest
    trainer.train()
    assert model.hard_masks_active
    kept = model.kept_sizes()
    assert kept["hidden"] == 24 and kept["ffn_0"] == 40 and kept["attention_1"] == 24
    student = model.merge_and_unload(progressbar=False, probe_inputs=random_batch())
    assert model.last_merge_deviation <= 1e-4
    assert student.config.hidden_size == 24
    assert student.config.num_attention_heads == (4 if strategy == "dim" else 2)
    # pruning happened where the schedule says, not before pruning_start
    dims = model.teacher_dims
    assert pruned_count(config, dims, "ffn", config.pruning_start + config.mask_interval - 1) == 0


def test_budget_schedule_places_hard_masks_at_the_fraction_asked():
    from wid_hf.config import BUDGET_LONG_RUN_STEPS

    for steps in (40, 120, 300, 600, BUDGET_LONG_RUN_STEPS - 1, BUDGET_LONG_RUN_STEPS, 1500, 40_000):
        default = WIDConfig.for_budget(steps, target_ratio=0.5)
        # nine equal intervals from step 0 to hard masks at 55%, from 1,000 steps at 40%
        fraction = 0.55 if steps < 1000 else 0.4
        assert (default.pruning_start, default.mask_interval) == (0, max(1, int(steps * fraction / 9 + 1e-9)))
        assert default == WIDConfig.for_budget(steps, hard_mask_at=fraction, target_ratio=0.5)
        for fraction in (0.28, 0.55, 0.75):
            c = WIDConfig.for_budget(steps, hard_mask_at=fraction, target_ratio=0.5)
            hard = c.pruning_start + (c.pruning_intervals + 1) * c.mask_interval
            assert c.pruning_intervals == 8
            assert abs(hard / steps - fraction) <= 9 / steps + 1e-9, (steps, fraction, hard)  # within one step/interval
    for bad in (0.0, -0.2, 1.0, 1.5):
        with pytest.raises(ValueError, match="hard_mask_at"):
            WIDConfig.for_budget(300, hard_mask_at=bad, target_ratio=0.5)


def test_budget_mode_trains_without_dropout_and_the_student_keeps_the_teachers(tmp_path):
    from wid_hf import WIDModel

    def dropout_ps(model):
        return {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}

    config = WIDConfig.for_budget(300, target_ratio=0.5)
    assert config.train_dropout == 0.0
    batch = batch_with_labels()
    model = get_wid_model(tiny_teacher(dropout=0.1), config).train()
    assert dropout_ps(model) == {0.0}
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, model(**batch).logits)  # in train mode, and nothing is dropped
    # left unset (the reference presets), the teacher's dropout trains: the same check fails there
    default = get_wid_model(tiny_teacher(dropout=0.1), WIDConfig(target_ratio=0.5)).train()
    assert dropout_ps(default) == {0.1}
    with torch.no_grad():
        assert not torch.equal(default(**batch).logits, default(**batch).logits)
    # saved with the WID state, so a resumed run trains as the first did
    model.save_pretrained(tmp_path)
    assert dropout_ps(WIDModel.from_pretrained(tiny_teacher(dropout=0.1), tmp_path)) == {0.0}
    # only the modules change: the config, and so the merged student, keep the teacher's dropout for fine-tuning
    assert model.config.hidden_dropout_prob == 0.1
    model.finalize_masks()  # the masks as pruning leaves them, so the merge is exact
    student = model.merge_and_unload(progressbar=False)
    assert student.config.hidden_dropout_prob == student.config.attention_probs_dropout_prob == 0.1
    assert dropout_ps(student) == {0.1}
    for bad in (-0.1, 1.0, True):
        with pytest.raises(ValueError, match="train_dropout"):
            WIDConfig(target_ratio=0.5, train_dropout=bad)


def test_resume_mid_pruning_with_taylor_scores_is_exact(tmp_path):
    full = budget_trainer(tmp_path / "a", save_strategy="steps", save_steps=8)
    full.train()
    expected = {k: v.detach().clone() for k, v in full.wid_model.state_dict().items()}
    checkpoint = tmp_path / "a" / "checkpoint-8"  # mid-pruning: selections at steps 2 to 8 happened, more follow
    assert os.path.isfile(checkpoint / "wid_model.safetensors")
    resumed = budget_trainer(tmp_path / "a", save_strategy="steps", save_steps=8)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    got = resumed.wid_model.state_dict()
    assert any(k.startswith("masks.score_") for k in expected)  # the scores are part of the saved state
    for name, value in expected.items():
        assert torch.allclose(value.float(), got[name].float(), atol=1e-6, rtol=0), name
