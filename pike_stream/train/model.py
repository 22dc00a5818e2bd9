"""The model: a GPT-2-style causal LM (``transformers.GPT2LMHeadModel``) as a Composer model.

Batches are the mixer's ``{"input_ids": [b, seq_len], "domain": [b], "sample_id": [b]}``: packed sequences
without padding, so every position after the first is a next-token target. The training loss is the mean
next-token cross-entropy; evaluation updates ``LanguageCrossEntropy`` and ``LanguagePerplexity`` (Composer
logs them per evaluator as ``metrics/<domain>/LanguageCrossEntropy``). The network sits in ``.model`` so
:func:`pike_stream.probe.causal_lm_per_sample_loss` finds it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from composer.metrics.nlp import LanguageCrossEntropy, LanguagePerplexity
from composer.models import ComposerModel
from torchmetrics import Metric
from transformers import GPT2Config, GPT2LMHeadModel

from pike_stream.train.config import ModelConfig

__all__ = ["CausalLM", "IGNORE_INDEX", "EVAL_METRICS", "next_token_targets"]

IGNORE_INDEX = -100
EVAL_METRICS = ("LanguageCrossEntropy", "LanguagePerplexity")


def next_token_targets(input_ids: torch.Tensor) -> torch.Tensor:
    """``input_ids`` shifted left by one, the last position ignored: the target of each position."""
    targets = torch.full_like(input_ids, IGNORE_INDEX)
    targets[:, :-1] = input_ids[:, 1:]
    return targets


class CausalLM(ComposerModel):
    """A randomly initialised GPT-2 of the shape in ``config`` (nothing is downloaded).

    Args:
        config: layers, width, heads, vocabulary, dropout.
        max_seq_len: the sequence length of the data (``n_positions`` defaults to it).
    """

    def __init__(self, config: ModelConfig, max_seq_len: int) -> None:
        super().__init__()
        n_positions = config.n_positions or max_seq_len
        if n_positions < max_seq_len:
            raise ValueError(f"model.n_positions={n_positions} is shorter than max_seq_len={max_seq_len}")
        self.config = GPT2Config(
            vocab_size=config.vocab_size, n_positions=n_positions, n_embd=config.n_embd, n_layer=config.n_layer,
            n_head=config.n_head, n_inner=config.n_inner, resid_pdrop=config.dropout, embd_pdrop=config.dropout,
            attn_pdrop=config.dropout, initializer_range=config.init_std,
            tie_word_embeddings=config.tie_word_embeddings, use_cache=False)
        self.model = GPT2LMHeadModel(self.config)
        self.vocab_size = config.vocab_size
        self.train_metrics: dict[str, Metric] = {}
        self.eval_metrics: dict[str, Metric] = {"LanguageCrossEntropy": LanguageCrossEntropy(ignore_index=IGNORE_INDEX),
                                                "LanguagePerplexity": LanguagePerplexity(ignore_index=IGNORE_INDEX)}

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Logits ``[b, seq_len, vocab]`` of ``batch["input_ids"]``."""
        return self.model(input_ids=batch["input_ids"], use_cache=False).logits

    def loss(self, outputs: torch.Tensor, batch: Mapping[str, Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        """Mean next-token cross-entropy over every position that has a next token."""
        targets = next_token_targets(batch["input_ids"])
        return F.cross_entropy(outputs.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)

    def eval_forward(self, batch: Mapping[str, Any], outputs: Any | None = None) -> torch.Tensor:
        return outputs if outputs is not None else self.forward(batch)

    def get_metrics(self, is_train: bool = False) -> dict[str, Metric]:
        return self.train_metrics if is_train else self.eval_metrics

    def update_metric(self, batch: Mapping[str, Any], outputs: torch.Tensor, metric: Metric) -> None:
        metric.update(outputs.float(), next_token_targets(batch["input_ids"]))
