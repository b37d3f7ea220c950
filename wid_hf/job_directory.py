"""The output directory of a `wid-hf compress` job: what a job writes there, the lock that keeps one job per
directory, and `--overwrite`, which deletes only what a job wrote.

A directory is a job directory when it holds a ``job.json`` that wid_hf wrote. A job runs in a new or empty
directory, or in its own job directory (to resume it); any other non-empty directory is refused, with or without
``--overwrite``, so a mistyped ``--output_dir`` can never delete a user's files.

    >>> from wid_hf.job_directory import JobLock, read_job_file
    >>> read_job_file("runs/demo")["identity"]["max_steps"]                # doctest: +SKIP
    300
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from typing import Optional

try:  # POSIX; the kernel drops the lock of a process that dies, so a killed job never leaves a stale one
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock, one job per directory is then the user's care
    fcntl = None

JOB_FILE = "job.json"
LOCK_FILE = ".wid-hf.lock"
# Everything a job writes into its output directory, so everything --overwrite deletes (with the ".incomplete"
# siblings of atomic writes). The tokenised corpora in cache/ stay: their names hash the corpus' files, sizes and
# modification times, so a cached corpus is never stale, and a job restarted with --overwrite reuses it.
JOB_OUTPUTS = ("job.json", "report.json", "report.md", "training.png", "schedule.png", "checkpoints", "teacher",
               "student")
_KEPT = ("cache", LOCK_FILE)


class JobMismatchError(ValueError):
    """The output directory cannot take this job (another job's directory, a user's folder, a file)."""


class JobLockedError(JobMismatchError):
    """Another wid-hf job is running in the output directory."""


def read_job_file(directory: str) -> Optional[dict]:
    """The ``job.json`` of a job directory (None when there is none); an unreadable one is an error, never
    taken for a job directory."""
    path = os.path.join(directory, JOB_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as err:  # UnicodeDecodeError is a ValueError
        raise JobMismatchError(f"{path} is unreadable ({first_line(err)}), so {directory} is not a wid-hf job "
                               "directory wid-hf can resume or overwrite; give another --output_dir.") from err
    if not isinstance(data, dict) or not isinstance(data.get("identity"), dict) or "wid_hf" not in data:
        raise JobMismatchError(f"{path} was not written by wid-hf, so {directory} is not a wid-hf job directory; "
                               "give another --output_dir.")
    return data


def check_output_dir(directory: str) -> Optional[dict]:
    """Refuse an output directory no job may use (a file; a non-empty folder without a wid-hf ``job.json``);
    returns the ``job.json`` there, if any. Reads only."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise JobMismatchError(f"--output_dir {directory} is a file; give a new or empty directory.")
    previous = read_job_file(directory)
    if previous is None and os.path.isdir(directory):
        others = sorted(set(os.listdir(directory)) - set(_KEPT))
        if others:
            raise JobMismatchError(
                f"--output_dir {directory} is not empty and is not a wid-hf job directory (it holds {others[0]!r}"
                f"{f' and {len(others) - 1} more' if len(others) > 1 else ''}); give a new or empty directory "
                "(--overwrite deletes only what a wid-hf job wrote, and only in its own directory).")
    return previous


def clear_job_outputs(directory: str) -> list[str]:
    """Delete what a job wrote in `directory` (`JOB_OUTPUTS`), nothing else; returns the names deleted."""
    removed = []
    for name in JOB_OUTPUTS:
        for entry in (name, name + ".incomplete"):
            path = os.path.join(directory, entry)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.remove(path)
            else:
                continue
            removed.append(entry)
    return removed


def refuse_distributed(command: str = "wid-hf compress") -> None:
    """A job is one process: under torchrun every rank would run the whole job in the same directory."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1:
        raise JobMismatchError(
            f"{command} runs as one process, not under torchrun (WORLD_SIZE={world}); for multi-GPU training run "
            "WIDTrainer under torchrun (README, 'Distributed training'), then `wid-hf merge` the checkpoint.")


class JobLock:
    """Holds ``.wid-hf.lock`` in a job directory for the life of the job: a second job there is refused with one line
    naming the running one. The lock is the kernel's (`fcntl.flock`): it goes with the process that holds it,
    so the file a killed job leaves behind is recognised as stale and taken over.

        >>> with JobLock("runs/demo"):                                    # doctest: +SKIP
        ...     train()
    """

    def __init__(self, directory: str):
        self.directory = directory
        self.path = os.path.join(directory, LOCK_FILE)
        self._fd: Optional[int] = None

    def __enter__(self) -> "JobLock":
        os.makedirs(self.directory, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 4096).decode("utf-8", "replace")
                os.close(fd)
                raise JobLockedError(f"--output_dir {self.directory} is in use by another wid-hf job "
                                     f"({_describe(holder)}); wait for it to finish, or give another --output_dir."
                                     ) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                                 "command": " ".join(["wid-hf", *sys.argv[1:]])}).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock; the file stays (removing it would race a job taking it)
            self._fd = None


def _describe(holder: str) -> str:
    try:
        info = json.loads(holder)
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"]))
        return f"pid {info['pid']} on {info['host']}, started {started}: {info['command']}"
    except (ValueError, KeyError, TypeError):
        return "a process that holds its lock"


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
