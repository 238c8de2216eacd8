"""Atomic file writes, hashing and small helpers shared by every stage."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch

from .errors import UserError

_TMP = re.compile(r"^\..+\.(?P<host>[^.]+)-(?P<pid>\d+)\.[^.]+\.tmp$")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds,
    so an interrupted write never leaves a half-written file or folder. The temporary name
    carries host and pid, so `remove_stale_temporaries` can clear what a killed process left."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{_host()}-{os.getpid()}.", suffix=".tmp", dir=path.parent))
    except OSError as exc:
        raise _write_error(path, exc) from None
    target = tmp / path.name
    try:
        yield target
        if path.is_dir():
            shutil.rmtree(path)
        os.replace(target, path)
    except OSError as exc:
        raise _write_error(path, exc) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def _write_error(path: Path, exc: OSError) -> Exception:
    if exc.errno == errno.ENOSPC:
        return UserError(f"no space left on the disk while writing {path}; free space or choose another output folder")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UserError(f"cannot write {path} ({exc.strerror}); choose an output folder you can write to "
                         "(--set output=...)")
    return exc


def remove_stale_temporaries(folder: str | Path) -> int:
    """Delete the temporaries of atomic writes whose process (on this host) is gone, e.g. after
    a SIGKILL; live ones, and those of other hosts sharing the disk, are left alone."""
    removed = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    for p in folder.rglob(".*.tmp"):
        m = _TMP.match(p.name)
        if m and m["host"] == _host() and not _alive(int(m["pid"])) and p.exists():
            shutil.rmtree(p, ignore_errors=True)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); delete it and rerun the stage that writes it") from None


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def invoked_command() -> str | None:
    """The `otdistill ...` command line that is running, to record next to what it made."""
    if Path(sys.argv[0]).name == "otdistill" or sys.argv[0].endswith("otdistill/cli.py"):
        return " ".join(["otdistill", *sys.argv[1:]])
    return None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        # under torchrun each process takes the GPU of its local rank
        local = int(os.environ.get("LOCAL_RANK", 0))
        return torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{name}' was asked for but no CUDA GPU is visible; use --set device=cpu")
    return torch.device(name)


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from parts, stable across processes and machines (unlike hash())."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator(*parts: int | str, device: str | torch.device = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(*parts))
    return g
