"""``python -m pike_stream.train CONFIG.yaml [key=value …]``: what ``composer -n N -m pike_stream.train`` runs.

The guard matters: Composer's remote checkpoint uploader starts ``spawn`` processes, which import this
module again (as ``__mp_main__``) and must not start another training run.
"""

from __future__ import annotations

import sys

__all__: list[str] = []

if __name__ == "__main__":
    from pike_stream.train.cli import main

    sys.exit(main(sys.argv[1:]))
