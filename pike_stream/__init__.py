"""pike_stream: adaptive data mixing (PiKE) for multi-domain LM pretraining on MDS shards.

    from pike_stream import Domain, PiKEStreamingMixer, PiKE

Names are imported on first use, so ``pike-stream convert`` does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what __getattr__ returns, for type checkers
    from pike_stream.algorithm import PiKE
    from pike_stream.mixer import BatchRamp, Domain, DomainDataError, MixerStateError, PiKEStreamingMixer

__all__ = ["Domain", "PiKEStreamingMixer", "PiKE", "BatchRamp", "MixerStateError", "DomainDataError"]
__version__ = "0.1.0"

_WHERE = {
    "Domain": "pike_stream.mixer",
    "PiKEStreamingMixer": "pike_stream.mixer",
    "MixerStateError": "pike_stream.mixer",
    "DomainDataError": "pike_stream.mixer",
    "BatchRamp": "pike_stream.mixer",
    "PiKE": "pike_stream.algorithm",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'pike_stream' has no attribute {name!r}")
