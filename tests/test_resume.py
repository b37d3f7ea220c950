"""The two mechanisms behind exact resume (`wid_hf/resume.py`), on their own; the whole job is killed and resumed in
tests/test_kill_resume.py."""

import json
import os

import torch
from conftest import tiny_tokenizer
from transformers import DataCollatorForLanguageModeling

from wid_hf.resume import CHECKPOINT_MARKER, MaskAtTrainingStep, checkpoint_step, last_complete_checkpoint


def test_masking_at_the_step_equals_the_collator(tmp_path):
    tokenizer = tiny_tokenizer(tmp_path / "tok")
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.3)
    g = torch.Generator().manual_seed(0)
    examples = [{"input_ids": [2] + torch.randint(5, 120, (n,), generator=g).tolist() + [3]} for n in (9, 14, 5)]
    torch.manual_seed(7)
    expected = collator(examples)
    deferred = MaskAtTrainingStep(collator)
    torch.manual_seed(1)
    padded = deferred(examples)  # the DataLoader's part draws nothing from the RNG...
    assert "labels" not in padded and torch.equal(padded["attention_mask"], expected["attention_mask"])
    torch.manual_seed(7)
    got = deferred.mask(padded)  # ...and the step's part draws exactly what the collator would have drawn
    for key in ("input_ids", "labels", "attention_mask"):
        assert torch.equal(got[key], expected[key]), key
    assert (got["labels"][got["attention_mask"] == 0] == -100).all()  # padding is never a target
    assert (got["labels"][:, 0] == -100).all()  # nor [CLS]


def _checkpoint(root, step, files=("wid_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth"),
                state=True):
    path = root / f"checkpoint-{step}"
    path.mkdir()
    (path / CHECKPOINT_MARKER).write_text('{"writer": "wid_hf", "world_size": 1}')  # first, as wid_hf writes it
    for name in files:
        (path / name).write_bytes(b"x")
    if state:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return str(path)


def test_only_complete_checkpoints_count(tmp_path):
    good = _checkpoint(tmp_path, 4)
    assert checkpoint_step(good) == 4
    _checkpoint(tmp_path, 8, files=("wid_model.safetensors", "optimizer.pt"), state=False)  # killed mid-write
    _checkpoint(tmp_path, 12, files=(), state=False)  # killed right after the folder and its marker were made
    (tmp_path / "checkpoint-10").mkdir()  # a folder wid_hf did not write (no marker): reported, never removed
    (tmp_path / "checkpoint-10" / "adapter_model.safetensors").write_bytes(b"x")
    said = []
    assert last_complete_checkpoint(str(tmp_path), say=said.append) == good
    assert len(said) == 3 and sum("incomplete" in line for line in said) == 2
    assert any("skipping" in line and "checkpoint-10" in line and "left as it is" in line for line in said)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-10", "checkpoint-4"]  # only wid_hf's leftovers removed

    torn = _checkpoint(tmp_path, 16, state=False)
    with open(os.path.join(torn, "trainer_state.json"), "w") as f:
        f.write('{"global_st')  # a torn trainer_state.json
    assert last_complete_checkpoint(str(tmp_path), say=said.append, remove_incomplete=False) == good
    assert os.path.isdir(torn)
    assert last_complete_checkpoint(str(tmp_path / "missing")) is None
