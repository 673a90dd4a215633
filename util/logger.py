"""Console + file logger (termcolor prefix on the console, plain text in ``info.txt``)."""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

from termcolor import colored


class _ColorFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno >= logging.ERROR:
            return colored("ERROR ", "red", attrs=["blink", "underline"]) + message
        if record.levelno >= logging.WARNING:
            return colored("WARNING ", "red") + message
        return message


def setup_logger(output_dir: Optional[str] = None, distributed_rank: int = 0, color: bool = True,
                 name: str = "clickpose", filename: str = "info.txt") -> logging.Logger:
    """Rank 0 logs to the console; every rank logs to ``output_dir/info.txt`` (``.rank{r}`` suffix on others)."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    plain = logging.Formatter("[%(asctime)s.%(msecs)03d] %(name)s %(levelname)s: %(message)s", datefmt="%m/%d %H:%M:%S")
    if distributed_rank == 0:
        console = logging.StreamHandler(stream=sys.stdout)
        console.setLevel(logging.INFO)
        prefix = colored("[%(asctime)s.%(msecs)03d %(name)s]: ", "green") if color else "[%(asctime)s %(name)s]: "
        console.setFormatter(_ColorFormatter(prefix + "%(message)s", datefmt="%m/%d %H:%M:%S") if color else plain)
        logger.addHandler(console)
    if output_dir:
        path = Path(output_dir) / filename
        if distributed_rank > 0:
            path = path.with_name(f"{path.name}.rank{distributed_rank}")
        path.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(path)
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(plain)
        logger.addHandler(file_handler)
    return logger
