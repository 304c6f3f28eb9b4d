"""Console output: one logger for the toolkit, quiet on all but the main process."""

from __future__ import annotations

import logging
import sys


def setup_logging(is_main_process: bool = True) -> logging.Logger:
    logger = logging.getLogger("toolkit")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("[toolkit] %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO if is_main_process else logging.WARNING)
    return logger


def summary(lines: dict[str, object]) -> str:
    """A one-screen end-of-run summary: aligned `name  value` lines."""
    width = max(len(k) for k in lines)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in lines.items())
