"""Route a stage's logging (and tqdm progress) to the rule's log file."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def setup_logging(log_path: str | Path | None = None, level: int = logging.INFO) -> logging.Logger:
    """Log to stderr and, when given, to ``log_path``; returns the ``hardgen`` logger.

    Snakemake scripts call this with ``snakemake.log[0]``; tqdm writes to stderr, which the
    wrapper redirects into the same log file (see ``workflow/scripts/_common.py``).
    """
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="a"))
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers, force=True
    )
    return logging.getLogger("hardgen")
