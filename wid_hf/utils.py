"""Small helpers shared by the merge, the baselines, the report, the model card and the benchmarks: the shape of a
student and parameter counts from the formula."""

from __future__ import annotations

import copy
from typing import Optional

from accelerate.utils import extract_model_from_parallel
from torch import nn


def student_config(teacher_config, hidden: int, intermediate: int, heads: Optional[int] = None,
                   layers: Optional[int] = None):
    """The teacher's config at the student's widths (and, given `layers`, depth). Embeddings and decoder of a
    student end up as different matrices (E·Cᵀ versus W_dec·L_dec after a merge), so a student never ties them."""
    config = copy.deepcopy(teacher_config)
    config.hidden_size = hidden
    config.intermediate_size = intermediate
    if heads is not None:
        config.num_attention_heads = heads
    if layers is not None:
        config.num_hidden_layers = layers
    config.tie_word_embeddings = False
    return config


def set_dropout(model: nn.Module, probability: float) -> int:
    """Set the probability of every `nn.Dropout` in `model` (BERT's attention reads its module's `p` too), leaving
    `model.config` as it is, so a model saved afterwards keeps its configured dropout. Returns how many were set."""
    layers = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    for layer in layers:
        layer.p = float(probability)
    return len(layers)


def layer_parameter_count(hidden: int, attention: int, ffn: int) -> int:
    """Parameters of one BERT encoder layer: Q/K/V (attention x hidden), attention output, two LayerNorms, FFN."""
    qkv = 3 * (attention * hidden + attention)
    out = hidden * attention + hidden
    return qkv + out + (hidden * ffn + ffn) + (ffn * hidden + hidden) + 2 * 2 * hidden


def bert_mlm_parameter_count(config, include_decoder: bool = True) -> int:
    """Parameters of a `BertForMaskedLM` with this config, from the formula (no model is built).

    With ``include_decoder=False`` the MLM decoder matrix is not counted: that is the count of a model whose
    decoder is tied to the word embeddings (and the count a teacher such as bert-base reports). An untied
    student's `cls.predictions.bias` is a separate parameter equal to the decoder bias; it is counted with the
    decoder.

    >>> from transformers import BertConfig
    >>> bert_mlm_parameter_count(BertConfig(), include_decoder=False)
    109514298
    """
    H, F, L, V = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size
    embeddings = (V + config.max_position_embeddings + config.type_vocab_size) * H + 2 * H
    layer = layer_parameter_count(H, H, F)
    head_transform = H * H + H + 2 * H
    decoder_bias = V
    total = embeddings + L * layer + head_transform + decoder_bias
    if include_decoder:
        total += V * H + V  # untied decoder weight, and cls.predictions.bias next to decoder.bias
    return total


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (tied tensors once)."""
    return sum(p.numel() for p in model.parameters())


def quiet_trainer_logs(trainer) -> None:
    """No log dictionary printed per logging step (the command line's console fits on one screen): the training
    bar shows the last loss instead, and without bars nothing is printed. The logs still reach
    ``trainer.state.log_history``, checkpoints and every other callback (training.png is drawn from them)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class LossInBar(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and self.training_bar is not None and logs and "loss" in logs:
                self.training_bar.set_postfix(loss=f"{float(logs['loss']):.3f}", refresh=False)

    trainer.remove_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(LossInBar)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module under every training wrapper Trainer and accelerate may put around it (DDP, DataParallel, FSDP,
    DeepSpeed, torch.compile, in any nesting order). A `WIDModel` or a plain BERT is returned as it is."""
    while True:
        inner = extract_model_from_parallel(model, keep_torch_compile=False)
        if inner is model:
            return model
        model = inner
