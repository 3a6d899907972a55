"""Old import path of the advantage estimators, kept for outside callers.

The code lives in `mapo.algorithm.advantages`; this module only re-exports its public names.
"""

from mapo.algorithm.advantages import *  # noqa: F403
