"""`python -m mapo.report RUN_DIR... [--plot]`: the short command for `mapo.analysis.report`.

The code lives in `mapo.analysis.report`; this module only forwards the command line.
"""

from mapo.analysis.report import main

if __name__ == "__main__":
    raise SystemExit(main())
