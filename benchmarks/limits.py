"""What every `tempo-rl bench` op checks before it allocates: sizes that are whole numbers in range,
an output directory that can be one, and inputs that fit in this machine's free memory. Each
failure is a `UsageError` (one line, exit 2) naming the flag."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

from tempo_rl.cli import UsageError, int_at_least

__all__ = ["check_fits", "check_out", "int_at_least", "mem_available_gib"]


def mem_available_gib() -> float:
    """MemAvailable of /proc/meminfo, in GiB (inf where the file does not exist)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("inf")


def check_fits(what: str, need_bytes: float) -> None:
    """UsageError when an op's inputs (`need_bytes`, an estimate) exceed the memory available now."""
    available = mem_available_gib()
    if need_bytes / 2**30 > available:
        raise UsageError(
            f"{what} needs about {need_bytes / 2**30:,.1f} GiB, more than the {available:,.1f} GiB available; "
            "use smaller sizes"
        )


def check_out(out: Path | str) -> None:
    """`--out` names a directory (made if missing), never an existing file, in which a file can be
    written: checked before the benchmark runs, by writing one, so its results are never lost at the
    end. Directories made for the check are removed again."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {path}: an existing file; give a directory for the results")
    made = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".tempo-rl-write-check-"):
            pass
    except OSError as e:
        raise UsageError(
            f"--out {path}: results cannot be written there ({e.strerror or e}); give a writable directory"
        ) from None
    finally:
        for directory in made:  # deepest first
            with contextlib.suppress(OSError):
                directory.rmdir()
