"""The library's data home: where the embedded S3 server keeps its data and remote shards are cached.

``$PIKE_STREAM_HOME``, else ``$XDG_CACHE_HOME/pike_stream``, else ``~/.cache/pike_stream``. Every path the
library keeps by default lives under it (``s3/``: the embedded server; ``shards/``: cached remote domains),
so removing it starts from scratch.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ENV_HOME", "data_home"]

ENV_HOME = "PIKE_STREAM_HOME"


def data_home() -> Path:
    """``$PIKE_STREAM_HOME``, else ``$XDG_CACHE_HOME/pike_stream``, else ``~/.cache/pike_stream`` (expanded)."""
    home = os.environ.get(ENV_HOME, "").strip()
    if home:
        return Path(home).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME", "").strip() or "~/.cache"
    return Path(cache).expanduser() / "pike_stream"
