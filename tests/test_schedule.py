"""The schedule reproduces the reference tables (docs/method.md, "The schedule", reference code's rules)."""

import pytest

from wid_hf import WIDConfig
from wid_hf.config import TeacherDims
from wid_hf.schedule import kept_sizes, pruned_count, pruning_end_step

BASE = TeacherDims(768, 3072, 12)
WID11 = WIDConfig.from_preset("wid11")
WID55 = WIDConfig.from_preset("wid55")


def per_head(cfg, kind, step):
    return pruned_count(cfg, BASE, kind, step) // 12


def test_wid11_dim_cuts_6_dims_per_head_per_interval_until_step_4000():
    assert [per_head(WID11, "attention", s) for s in (0, 499, 500, 999, 1000, 3500, 4000, 4500, 400_000)] == [
        0, 0, 6, 6, 12, 42, 48, 48, 48,
    ]
    assert per_head(WID11, "hidden", 4000) == 48 and per_head(WID11, "hidden", 3999) == 42
    assert kept_sizes(WID11, BASE, 4000)["attention"] == 192


def test_wid11_ffn_loses_144_neurons_per_interval_until_step_8000():
    assert [pruned_count(WID11, BASE, "ffn", s) for s in (500, 1000, 7500, 8000, 10_000)] == [144, 288, 2160, 2304, 2304]
    assert kept_sizes(WID11, BASE, 8000)["ffn"] == 768


def test_wid55_reaches_21_per_head_at_5500_and_1008_ffn_at_8000():
    assert [per_head(WID55, "attention", s) for s in (500, 5000, 5499, 5500, 8000)] == [2, 20, 20, 21, 21]
    assert [pruned_count(WID55, BASE, "ffn", s) for s in (500, 7999, 8000)] == [63, 945, 1008]


def test_mlm_head_group_is_linear_over_16_intervals():
    assert [pruned_count(WID11, BASE, "head", s) for s in (500, 7500, 8000)] == [36, 540, 576]


def test_head_strategy_removes_one_head_every_1000_steps():
    cfg = WIDConfig.from_preset("wid11-head")
    assert [pruned_count(cfg, BASE, "attention", s) for s in (500, 1000, 1999, 2000, 9000, 20_000)] == [
        0, 64, 64, 128, 576, 576,
    ]
    assert pruning_end_step(cfg, BASE) == 9000


def test_pruning_end_step():
    assert pruning_end_step(WID11, BASE) == 8000
    assert pruning_end_step(WID11, BASE, kinds=("hidden", "attention")) == 4000
    assert pruning_end_step(WID55, BASE, kinds=("attention",)) == 5500
    fast = WIDConfig(target_ratio=0.5, mask_interval=2, pruning_intervals=4)
    assert pruning_end_step(fast, TeacherDims(48, 96, 4)) == 8


def test_small_per_head_cut_still_progresses():
    # 1 dim per head to remove: the reference's integer division would never prune; wid_hf removes it.
    cfg = WIDConfig(target_hidden_size=36, target_intermediate_size=96)
    dims = TeacherDims(48, 96, 12)
    assert pruned_count(cfg, dims, "attention", 500) == 12


def test_negative_step_is_an_error():
    with pytest.raises(ValueError):
        pruned_count(WID11, BASE, "ffn", -1)
