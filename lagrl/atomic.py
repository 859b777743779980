"""Files written whole or not at all: a temporary file beside the target, flushed to disk, renamed over it.

One mechanism for every file lagrl writes that a crash or Ctrl-C must not leave half-written: models and
checkpoints (``lagrl.agents.training.save_atomically``), ``lagrl verify``/``evaluate`` JSON, a sweep's
``trials.csv`` and summaries, the experiments' reports and the benchmarks' run lists.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """``open(path, mode, **kwargs)`` for writing, made atomic: the stream is a temporary file ``.<name>.*.tmp``
    beside ``path``; on a clean exit it is flushed, fsynced, given the permissions ``open`` would have given and
    renamed over ``path``; on an exception (``KeyboardInterrupt`` included) it is removed and ``path`` is left as
    it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, mode, **kwargs) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp's 0600 → what open() would have given
        os.replace(temporary, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
