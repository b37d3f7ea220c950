import json

import pytest

from wid_hf import WIDConfig
from wid_hf.config import TeacherDims

BASE = TeacherDims(768, 3072, 12)


def test_presets_are_the_papers_students():
    assert WIDConfig.from_preset("wid55").resolve(BASE).target_hidden_size == 516
    c = WIDConfig.from_preset("wid11-head").resolve(BASE)
    assert (c.target_hidden_size, c.target_intermediate_size, c.head_strategy) == (192, 768, "head")
    with pytest.raises(ValueError, match="Unknown preset"):
        WIDConfig.from_preset("wid42")


def test_dim_strategy_needs_divisible_width_and_names_neighbours():
    with pytest.raises(ValueError, match=r"divisible by 12.*\[504, 516\]"):
        WIDConfig(target_hidden_size=510, target_intermediate_size=2048).resolve(BASE)


def test_head_strategy_needs_whole_heads_and_names_neighbours():
    with pytest.raises(ValueError, match=r"divisible by 64.*\[192, 256\]"):
        WIDConfig(target_hidden_size=200, target_intermediate_size=768, head_strategy="head").resolve(BASE)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(target_hidden_size=0, target_intermediate_size=10), "positive integer"),
        (dict(target_hidden_size=-12, target_intermediate_size=10), "positive integer"),
        (dict(target_hidden_size=12), "target_ratio"),
        (dict(target_ratio=1.5), r"\(0, 1\]"),
        (dict(target_ratio=0.5, head_strategy="rows"), "head_strategy"),
        (dict(target_ratio=0.5, mask_interval=0), "mask_interval"),
        (dict(target_ratio=0.5, mask_scoring="magic"), "mask_scoring"),
    ],
)
def test_invalid_configs_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WIDConfig(**kwargs)


def test_targets_larger_than_teacher_are_refused():
    with pytest.raises(ValueError, match="larger than the teacher's hidden_size=768"):
        WIDConfig(target_hidden_size=780, target_intermediate_size=768).resolve(BASE)
    with pytest.raises(ValueError, match="larger than the teacher's intermediate_size"):
        WIDConfig(target_hidden_size=192, target_intermediate_size=4000).resolve(BASE)


def test_ratio_gives_proportional_valid_targets():
    c = WIDConfig(target_ratio=0.5).resolve(TeacherDims(384, 1536, 12))
    assert (c.target_hidden_size, c.target_intermediate_size) == (192, 768)
    c = WIDConfig(target_ratio=0.3, head_strategy="head").resolve(BASE)
    assert c.target_hidden_size % 64 == 0 and c.target_hidden_size == 256  # 0.3*768=230.4 -> nearest head multiple
    # an explicit size wins over the ratio
    assert WIDConfig(target_ratio=0.5, target_hidden_size=516).resolve(BASE).target_hidden_size == 516


def test_json_round_trip_ignores_unknown_keys(tmp_path):
    c = WIDConfig(target_hidden_size=516, target_intermediate_size=2064, mask_interval=7, penalty_lambda=3.0)
    c.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "wid_config.json").read_text())
    data["wid_config"]["from_the_future"] = 1
    (tmp_path / "wid_config.json").write_text(json.dumps(data))
    assert WIDConfig.from_pretrained(tmp_path) == c
    # the flat layout early versions wrote (the config's fields at the top level) still loads
    (tmp_path / "wid_config.json").write_text(json.dumps(data["wid_config"]))
    assert WIDConfig.from_pretrained(tmp_path) == c
    (tmp_path / "wid_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        WIDConfig.from_pretrained(tmp_path)
