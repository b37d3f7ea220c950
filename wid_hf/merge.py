"""Structural re-parameterisation: fold every compactor into its weight and build the narrower, standard model
(docs/method.md, "Merge"). The result is a plain transformers model; nothing of wid_hf is left in it.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from .layer import EmbeddingCompactor, MaskedLayerNorm, WIDLinear, fold_chain
from .utils import student_config

EMBEDDING_TABLES = ("word_embeddings", "position_embeddings", "token_type_embeddings")


def _exact(tensor: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """`tensor` in float64 for a fold (on the CPU where the device has no float64, as MPS has not)."""
    if tensor is None:
        return None
    return tensor.detach().to("cpu" if tensor.device.type == "mps" else tensor.device, torch.float64)


def merged_state_dict(wid_model, progressbar: bool = True) -> dict[str, torch.Tensor]:
    """Tensors of the student, named as in the teacher, computed from the WID model's current state.

    Every wrapper contributes through the same `student_*` functions its forward uses on the student path, so the
    student computes exactly what the compactor model computes once masks are hard. Folds are computed in float64
    and rounded once to the model's dtype: a float32 fold rounds inside each product, and on real text the student
    then drifted 8x further from the compactor model (2.5e-4 against 3e-5 max abs logit, the demo's 300-step student).
    """
    base, cfg = wid_model.base_model, wid_model.wid_config
    dims = wid_model.teacher_dims
    # "dim" keeps A heads of h' = T / A dims: the student scales scores by 1/sqrt(h') where training used
    # 1/sqrt(h), so the query absorbs sqrt(h'/h) (docs/method.md, "Heads"; the reference code omits this).
    query_scale = (
        math.sqrt((cfg.target_hidden_size / dims.num_attention_heads) / dims.head_size)
        if cfg.head_strategy == "dim"
        else 1.0
    )
    wrappers = [(n, m) for n, m in base.named_modules() if isinstance(m, (WIDLinear, EmbeddingCompactor))]
    wrappers += [
        (n, m)
        for n, m in base.named_modules()
        if isinstance(m, MaskedLayerNorm) and not n.endswith(".norm")  # the embedding norm is handled above
    ]
    state: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, module in tqdm(wrappers, desc="Merging compactors", disable=not progressbar, leave=False):
            if isinstance(module, WIDLinear):
                factors = module.student_factors()
                weight, bias = fold_chain(*map(_exact, factors))
                if name.endswith("attention.self.query") and query_scale != 1.0:
                    weight = weight * query_scale
                    bias = bias * query_scale if bias is not None else None
                like = factors[1]  # the teacher's weight: its dtype and device
                state[f"{name}.weight"] = weight.to(like.device, like.dtype)
                if bias is not None:
                    state[f"{name}.bias"] = bias.to(like.device, like.dtype)
            elif isinstance(module, EmbeddingCompactor):
                c_kept = _exact(module.student_compactor())
                parent = name.rsplit(".", 1)[0]
                embeddings = base.get_submodule(parent)
                for table in EMBEDDING_TABLES:
                    like = getattr(embeddings, table).weight
                    state[f"{parent}.{table}.weight"] = (_exact(like) @ c_kept.T).to(like.device, like.dtype)
                _put_norm(state, name, module.norm)
            else:
                _put_norm(state, name, module)
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def _put_norm(state: dict, name: str, module: MaskedLayerNorm) -> None:
    state[f"{name}.weight"], state[f"{name}.bias"] = module.student_weight_and_bias()


def build_student(wid_model, progressbar: bool = True) -> nn.Module:
    """Instantiate the teacher's class at the student's widths and load the merged tensors into it."""
    base, cfg, dims = wid_model.base_model, wid_model.wid_config, wid_model.teacher_dims
    heads = (
        dims.num_attention_heads if cfg.head_strategy == "dim" else cfg.target_hidden_size // dims.head_size
    )
    config = student_config(base.config, cfg.target_hidden_size, cfg.target_intermediate_size, heads)
    reference = next(base.parameters())
    kwargs = {}
    if type(base).__name__ == "BertModel":
        kwargs["add_pooling_layer"] = getattr(base, "pooler", None) is not None
    student = type(base)(config, **kwargs).to(device=reference.device, dtype=reference.dtype)

    merged = merged_state_dict(wid_model, progressbar=progressbar)
    target = student.state_dict()
    teacher_state = base.state_dict()
    for key, value in target.items():
        if key in merged:
            continue
        if key.endswith("cls.predictions.bias") and key.replace("cls.predictions.bias", "cls.predictions.decoder.bias") in merged:
            # tied to the decoder bias in the teacher; kept equal in the (untied) student
            merged[key] = merged[key.replace("cls.predictions.bias", "cls.predictions.decoder.bias")].clone()
        elif key in teacher_state and teacher_state[key].shape == value.shape:
            merged[key] = teacher_state[key].detach().clone()
        else:
            raise RuntimeError(
                f"merge produced no tensor for {key!r} of {type(base).__name__}; this module is not covered by "
                "wid_hf's injection table. Please report it with the model's class and config."
            )
    for key, value in merged.items():
        if key in target and target[key].shape != value.shape:
            raise RuntimeError(f"merged {key} has shape {tuple(value.shape)}, student expects {tuple(target[key].shape)}")
    student.load_state_dict({k: merged[k] for k in target}, strict=True)
    return student
