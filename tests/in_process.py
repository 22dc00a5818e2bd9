"""Composer training in the test process: one helper, so every in-process run restores the same things."""

from __future__ import annotations

from typing import Any

__all__ = ["fit"]


def fit(cfg: dict[str, Any]) -> None:
    """Build ``pike-stream train``'s Trainer from a config dict and train it on one thread; the process group
    it starts is destroyed afterwards, and torch's thread count restored."""
    import torch
    import torch.distributed

    from pike_stream.train.builder import build_trainer
    from pike_stream.train.config import config_from_dict

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = build_trainer(config_from_dict(cfg))
        trainer.fit()
        trainer.close()
    finally:
        torch.set_num_threads(threads)
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
