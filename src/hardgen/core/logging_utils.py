"""Route a stage's logging (and tqdm progress) to the rule's log file."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def setup_logging(log_path: str | Path | None = None, level: int = logging.INFO) -> logging.Logger:
    """Log to stderr and, when given, to ``log_path``; returns the ``hardgen`` logger.

    Snakemake scripts call this with ``snakemake.log[0]``; tqdm writes to stderr, which
    :class:`stage_logging` (below, used by every ``workflow/scripts/*.py``) redirects into the same log file.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="a"))
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers, force=True
    )
    return logging.getLogger("hardgen")


class stage_logging:  # noqa: N801 - used as a context manager like open()
    """Send stdout/stderr (tqdm included) and the ``hardgen`` logger to a rule's log file.

    ``with stage_logging(snakemake.log[0]) as log: ...`` — any exception is logged with its traceback before it
    propagates, so the rule fails with a non-zero exit and the reason sits in the log.
    """

    def __init__(self, log_path: str | Path) -> None:
        self.log_path = Path(log_path)

    def __enter__(self) -> logging.Logger:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.log_path, "a", buffering=1)  # noqa: SIM115 - closed in __exit__
        self._saved = (sys.stdout, sys.stderr)
        sys.stdout = sys.stderr = self._file
        return setup_logging(None)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:
            logging.getLogger("hardgen").error("stage failed: %s", exc, exc_info=(exc_type, exc, tb))
        sys.stdout, sys.stderr = self._saved
        self._file.close()
        if exc is not None:
            print(f"hardgen: {exc_type.__name__}: {exc} (details in {self.log_path})", file=sys.stderr)
