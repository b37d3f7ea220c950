"""Weight Distillation (Lin et al., ACL 2021): a parameter generator makes every student weight from the teacher's,

    W_S = alpha * tanh(P_out^T (sum_k c_k W_T^(k)) P_in) + beta,

with learned projections P (shared per kind of dimension: hidden, attention, FFN), layer-mixing weights c over a
group of teacher layers, and element-wise alpha (init 1) and beta (init 0). Biases and LayerNorm parameters are
projected the same way without the tanh (a LayerNorm weight near 1 would be squashed). Train the generator with
the student's loss, `materialize()` the student once, then continue training it as a plain model.

    >>> generator = WeightGenerator(teacher, hidden_size=192, intermediate_size=768)      # doctest: +SKIP
    >>> loss = generator(**batch).loss; loss.backward()                                   # doctest: +SKIP
    >>> student = generator.materialize()                                                 # doctest: +SKIP
"""

from __future__ import annotations

import copy
import re
from typing import Optional

import torch
from torch import nn
from torch.func import functional_call

from ..utils import student_config

_LAYER = re.compile(r"(.*\.layer\.)(\d+)(\..*)")


def _axis_kinds(name: str) -> tuple:
    """(output kind, input kind) of a BERT tensor; kinds are hidden / attn / ffn, or None (never projected)."""
    if re.search(r"attention\.self\.(query|key|value)\.", name):
        return ("attn", "hidden")
    if "attention.output.dense." in name:
        return ("hidden", "attn")
    if "intermediate.dense." in name:
        return ("ffn", "hidden")
    if re.search(r"layer\.\d+\.output\.dense\.", name):
        return ("hidden", "ffn")
    if "LayerNorm" in name or "transform.dense." in name:
        return ("hidden", "hidden")
    if "_embeddings." in name or "decoder.weight" in name:
        return (None, "hidden")
    return (None, None)  # decoder bias, cls.predictions.bias


class WeightGenerator(nn.Module):
    """Generates a narrower (and optionally shallower) student of the teacher's class from the frozen teacher."""

    def __init__(self, teacher: nn.Module, hidden_size: int, intermediate_size: int,
                 num_hidden_layers: Optional[int] = None, seed: int = 0):
        super().__init__()
        t_cfg = teacher.config
        config = student_config(t_cfg, hidden_size, intermediate_size, layers=num_hidden_layers)
        if hidden_size % config.num_attention_heads:
            raise ValueError(f"hidden_size {hidden_size} must be divisible by {config.num_attention_heads} heads.")
        self.student = type(teacher)(config)
        for p in self.student.parameters():
            p.requires_grad_(False)
        self.teacher_state = {k: v.detach() for k, v in teacher.state_dict().items()}
        g = torch.Generator().manual_seed(seed)
        sizes = {"hidden": (t_cfg.hidden_size, hidden_size), "attn": (t_cfg.hidden_size, hidden_size),
                 "ffn": (t_cfg.intermediate_size, intermediate_size)}
        # P starts as the selection of a random subset of the teacher's dims (a valid extraction), then learns.
        self.projections = nn.ParameterDict({
            kind: nn.Parameter(torch.eye(big)[:, torch.randperm(big, generator=g)[:small].sort().values].clone())
            for kind, (big, small) in sizes.items()
        })
        groups = _layer_groups(t_cfg.num_hidden_layers, config.num_hidden_layers)
        self.layer_groups = groups
        self.mix = nn.ParameterList([nn.Parameter(torch.full((len(g_),), 1.0 / len(g_))) for g_ in groups])
        self.alpha, self.beta, self.names = nn.ParameterList(), nn.ParameterList(), []
        for name, tensor in self.student.state_dict().items():
            if not tensor.is_floating_point() or name not in dict(self.student.named_parameters()):
                continue
            self.names.append(name)
            self.alpha.append(nn.Parameter(torch.ones_like(tensor)))
            self.beta.append(nn.Parameter(torch.zeros_like(tensor)))

    @property
    def config(self):
        return self.student.config

    def _teacher_source(self, name: str) -> torch.Tensor:
        match = _LAYER.fullmatch(name)
        if not match:
            return self._teacher(name)
        i = int(match.group(2))
        weights = self.mix[i]
        sources = [self._teacher(f"{match.group(1)}{j}{match.group(3)}") for j in self.layer_groups[i]]
        return sum(w * s for w, s in zip(weights, sources))

    def _teacher(self, name: str) -> torch.Tensor:
        if name in self.teacher_state:
            return self.teacher_state[name]
        if name.endswith("cls.predictions.bias"):
            return self.teacher_state[name.replace("cls.predictions.bias", "cls.predictions.decoder.bias")]
        raise KeyError(f"teacher has no tensor {name}")

    def generate(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, alpha, beta in zip(self.names, self.alpha, self.beta):
            source = self._teacher_source(name).to(alpha.device)
            out_kind, in_kind = _axis_kinds(name)
            if source.dim() == 2:
                if out_kind is not None:
                    source = self.projections[out_kind].T @ source
                if in_kind is not None:
                    source = source @ self.projections[in_kind]
                out[name] = alpha * torch.tanh(source) + beta
            else:
                kind = out_kind if out_kind is not None else None
                if kind is not None:
                    source = source @ self.projections[kind]
                out[name] = alpha * source + beta
        return out

    def forward(self, **kwargs):
        return functional_call(self.student, self.generate(), args=(), kwargs=kwargs, strict=False)

    @torch.no_grad()
    def materialize(self) -> nn.Module:
        """The student with its generated weights: a plain model of the teacher's class, trainable as usual."""
        student = copy.deepcopy(self.student)
        student.load_state_dict(self.generate(), strict=False)
        for p in student.parameters():
            p.requires_grad_(True)
        return student


def _layer_groups(teacher_layers: int, student_layers: int) -> list[list[int]]:
    """Consecutive, near-equal groups of teacher layers, one group per student layer."""
    bounds = [round(i * teacher_layers / student_layers) for i in range(student_layers + 1)]
    return [list(range(bounds[i], max(bounds[i] + 1, bounds[i + 1]))) for i in range(student_layers)]
