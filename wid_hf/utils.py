"""Small helpers shared by the report, the model card and the benchmarks."""

from __future__ import annotations

from torch import nn


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
    layer = 4 * (H * H + H) + 2 * H + (H * F + F) + (F * H + H) + 2 * H
    head_transform = H * H + H + 2 * H
    decoder_bias = V
    total = embeddings + L * layer + head_transform + decoder_bias
    if include_decoder:
        total += V * H + V  # untied decoder weight, and cls.predictions.bias next to decoder.bias
    return total


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (tied tensors once)."""
    return sum(p.numel() for p in model.parameters())
