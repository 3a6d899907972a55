"""Bad input ends a run with one line and exit status 2, not a traceback.

A config, data or checkpoint error is the user's to fix and its message already says what is
wrong, why and how to fix it; Hydra would print a 20-line traceback above it. Entry points
run inside ``user_errors()``; ``HYDRA_FULL_ERROR=1`` keeps the whole traceback for debugging.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from mapo.algorithm.config import ConfigError
from mapo.data.schema import BadRowError, SchemaError
from mapo.registry import UnknownNameError
from mapo.trainer.checkpointing import CheckpointLoadError

USER_ERRORS = (ConfigError, SchemaError, BadRowError, UnknownNameError, CheckpointLoadError)
EXIT_USER_ERROR = 2  # as argparse does for bad arguments


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a ``USER_ERRORS`` exception into ``error: <message>`` on stderr and exit 2."""
    try:
        yield
    except USER_ERRORS as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USER_ERROR) from None
