"""What train.py and eval.py print: each line once, only the warnings that apply to this trainer.

`setup_console()` is called once at the start of a run, after Hydra has configured logging:

- Lightning's loggers propagate to the root logger when it has handlers at Lightning's import,
  and add their own StreamHandler otherwise; under Hydra both can end up printing, so every
  Lightning INFO line showed twice. We drop Lightning's own handlers and let the root (Hydra's
  console + train.log) print each record once.
- Lightning's product tips ("try installing litlogger / litmodels") are dropped by a logging
  filter that matches their exact text.
- Three warnings that do not apply to this trainer are ignored by message AND module
  (`IGNORED_WARNINGS`, each with the reason); any other warning, from any module, still shows.
- Hydra's console handler writes to whatever `sys.stdout` is at the time of each record, so a
  live progress bar (which redirects stdout) keeps log lines above the bar instead of tearing it.
- In a pipe or CI log the Hugging Face progress bars (carriage-return redraws) are switched off;
  `mapo.console.progress` prints a few plain lines instead.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from typing import NamedTuple


class IgnoredWarning(NamedTuple):
    message: str  # regex matched at the start of the warning text
    category: type[Warning]
    module: str  # regex matched against the whole name of the module that raised it
    why: str


def ignored_warnings() -> tuple[IgnoredWarning, ...]:
    from lightning.fabric.utilities.warnings import PossibleUserWarning

    return (
        IgnoredWarning(
            r"Found \d+ module\(s\) in eval mode at the start of training",
            PossibleUserWarning,
            r"lightning\.pytorch\.loops\.fit_loop",
            "the frozen reference policy (and a frozen vision tower) stay in eval mode on "
            "purpose: they are never trained, and dropout must stay off in them",
        ),
        IgnoredWarning(
            r"Using ModelCheckpoint with manual optimization and every_n_train_steps",
            UserWarning,
            r"lightning\.pytorch\.callbacks\.model_checkpoint",
            "a checkpoint is meant to hold the weights after the RL step's updates: resuming "
            "continues with the next step (tests/test_reliability_resume.py)",
        ),
        IgnoredWarning(
            r"`isinstance\(treespec, LeafSpec\)` is deprecated",
            FutureWarning,
            r"lightning\.pytorch\.utilities\._pytree",
            "Lightning 2.6's own use of a torch API it has not migrated yet; nothing a user "
            "of this project can act on",
        ),
    )


# Lightning's advertisements for other products, logged at INFO on every fit.
_TIPS = re.compile(r"💡 Tip: For seamless cloud (logging|uploads)")
_LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning")


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith("lightning") and _TIPS.match(str(record.getMessage())))


class _CurrentStdout:
    """A stream that is whatever sys.stdout is when written to (see the module docstring)."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


def interactive() -> bool:
    """True when stdout is a terminal that can redraw a progress bar (not a pipe, file, CI log
    or TERM=dumb)."""
    isatty = getattr(sys.stdout, "isatty", None)
    return bool(isatty and isatty()) and os.environ.get("TERM", "") != "dumb"


def filter_warnings() -> None:
    """Ignore exactly the warnings of `ignored_warnings()` (message, category and module)."""
    for w in ignored_warnings():
        warnings.filterwarnings(
            "ignore", message=w.message, category=w.category, module=w.module + r"\Z"
        )


def _route_logging() -> None:
    import lightning.pytorch  # noqa: F401  (its import adds the handlers removed below)

    root = logging.getLogger()
    for name in _LIGHTNING_LOGGERS:
        lg = logging.getLogger(name)
        if root.handlers:  # the root prints; Lightning's own handlers would print again
            for handler in list(lg.handlers):
                lg.removeHandler(handler)
            lg.propagate = True
    tips = _DropTips()
    handlers = [h for n in ("", *_LIGHTNING_LOGGERS) for h in logging.getLogger(n).handlers]
    for handler in handlers:  # a handler filter sees records of every logger it prints
        if not any(isinstance(f, _DropTips) for f in handler.filters):
            handler.addFilter(tips)
    for handler in root.handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream in (
            sys.stdout,
            sys.__stdout__,
        ):
            handler.setStream(_CurrentStdout())


def _quiet_hf_bars() -> None:
    """Hugging Face's tqdm bars redraw with carriage returns; in a log they are noise."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    try:
        import huggingface_hub.utils as hub_utils

        hub_utils.disable_progress_bars()
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        pass


def setup_console() -> None:
    """Call once per process, after Hydra has configured logging (idempotent)."""
    filter_warnings()
    _route_logging()
    if not interactive():
        _quiet_hf_bars()
