"""Baselines from the literature WID is compared with (docs/method.md, "Baselines"), in the same package and Trainer:
Extract-Then-Distill initialisation (`etd`), the KD objectives of "How to Distill your BERT" (`distill`) and
Weight Distillation's parameter generator (`weight_distillation`). `wid_hf.pipeline` trains any of them end to end."""

from .distill import OBJECTIVES, DistillationTrainer, WIDDistillationTrainer
from .etd import extract_student, gradient_importance, layer_choice, parse_layers, resolve_layers, select_layers, uniform_layers
from .weight_distillation import WeightGenerator

__all__ = ["OBJECTIVES", "DistillationTrainer", "WIDDistillationTrainer", "extract_student", "gradient_importance",
           "layer_choice", "parse_layers", "resolve_layers", "select_layers", "uniform_layers", "WeightGenerator"]
