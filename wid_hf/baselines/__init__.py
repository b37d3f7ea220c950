"""Baselines from the literature WID is compared with (WID_SPEC.md §9), in the same package and Trainer:
Extract-Then-Distill initialisation (`etd`), the KD objectives of "How to Distill your BERT" (`distill`) and
Weight Distillation's parameter generator (`weight_distillation`)."""

from .distill import DistillationArguments, DistillationTrainer, WIDDistillationTrainer
from .etd import extract_student, gradient_importance, layer_choice, select_layers, uniform_layers
from .weight_distillation import WeightGenerator

__all__ = ["DistillationArguments", "DistillationTrainer", "WIDDistillationTrainer", "extract_student",
           "gradient_importance", "layer_choice", "select_layers", "uniform_layers", "WeightGenerator"]
