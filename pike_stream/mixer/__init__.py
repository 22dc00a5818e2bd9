"""The PiKEStreamingMixer and its parts: domains, per-domain orders, shard read-ahead, checkpoint state."""

from pike_stream.mixer.batch_size import BatchRamp
from pike_stream.mixer.domain import Domain, DomainDataError
from pike_stream.mixer.mixer import PiKEStreamingMixer
from pike_stream.mixer.shards import ShardFetchError, ShardIntegrityError
from pike_stream.mixer.state import MixerStateError

__all__ = ["BatchRamp", "Domain", "DomainDataError", "MixerStateError", "PiKEStreamingMixer", "ShardFetchError",
           "ShardIntegrityError"]
