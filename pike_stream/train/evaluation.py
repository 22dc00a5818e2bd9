"""Per-domain validation: one Composer ``Evaluator`` per domain, over the first samples of its split, in order.

Every evaluation reads the same samples (the first ``max_batches × device_batch_size`` of the split, split
across ranks by Composer's distributed sampler), so the per-domain losses of a run are comparable over time
and between runs. Shards are read through the mixer's own machinery (:class:`DomainSource`, :class:`ShardCache`):
the same download, cache and hash checks as training data.
"""

from __future__ import annotations

import numpy as np
import torch
from composer.core import Evaluator
from composer.utils import dist
from torch.utils.data import DataLoader, Dataset

from pike_stream.mixer.domain import Domain, DomainSource
from pike_stream.mixer.shards import ShardCache
from pike_stream.train.model import EVAL_METRICS

__all__ = ["DomainEvalDataset", "domain_evaluator"]


class DomainEvalDataset(Dataset):
    """The first ``num_samples`` samples of one domain, by sample id, as ``{"input_ids", "domain", "sample_id"}``.

    ``domain_index`` is the domain's position among the training domains (``-1`` if it is only evaluated).
    """

    def __init__(self, source: DomainSource, num_samples: int | None, domain_index: int = -1) -> None:
        self.source = source
        self.length = source.num_samples if num_samples is None else min(int(num_samples), source.num_samples)
        self.domain_index = domain_index
        self._cache = ShardCache([source], workers=0)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(f"sample {index} of domain {self.source.name!r} (evaluating {self.length})")
        shard, within = self.source.locate(np.array([index]))
        self._cache.ensure(0, int(shard[0]))
        tokens = np.asarray(self.source.read(int(shard[0]), int(within[0])), dtype=np.int64)
        return {"input_ids": torch.from_numpy(tokens), "domain": torch.tensor(self.domain_index),
                "sample_id": torch.tensor(index)}


def domain_evaluator(domain: Domain, *, device_batch_size: int, max_batches: int | None,
                     domain_index: int = -1) -> tuple[Evaluator, DomainEvalDataset]:
    """An ``Evaluator`` labelled ``domain.name`` with the language-model metrics, and its dataset (the opened
    source in ``.source``)."""
    source = DomainSource.open(domain)
    num_samples = None if max_batches is None else max_batches * device_batch_size
    dataset = DomainEvalDataset(source, num_samples, domain_index)
    sampler = dist.get_sampler(dataset, shuffle=False, drop_last=False)
    loader = DataLoader(dataset, batch_size=device_batch_size, sampler=sampler, num_workers=0)
    return Evaluator(label=domain.name, dataloader=loader, metric_names=list(EVAL_METRICS)), dataset
