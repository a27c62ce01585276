"""The on-disk cache for decoded datasets: one safetensors file per dataset and size, beside the data.

A dataset decoded from thousands of image files is saved once as tensors and read back in a fraction of a second.
The cache is derived data, valid only for the source files it was made from:

- keyed on the source listing (each file's name, size and modification time, `listing_key`), so a file replaced
  or corrupted after caching makes the cache stale and it is rebuilt, never trusted by its path alone;
- written through matchnet.atomic (a temporary file in the same folder, fsync, rename), so a crash or a full disk
  never leaves half a cache that a later run would read;
- readable by others (0644 less the umask: safetensors alone writes 0600), so users sharing a data folder share
  its cache instead of failing to read it;
- beside the data when that folder is writable, else in $MATCHNET_CACHE or ~/.cache/matchnet (a read-only or
  full data folder); if neither can be written the data is still returned, just not cached.

Use:
    key = listing_key(files, base=folder, extra={"size": 28})
    hit = load_cached(folder, "matchnet_cache_28.safetensors", key)   # (tensors, meta) or None
    if hit is None:
        ... decode ...
        save_cached(folder, "matchnet_cache_28.safetensors", key, tensors, meta)
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..atomic import write_with

ENV = "MATCHNET_CACHE"  # where caches go when the data folder cannot take them
_META = "matchnet_cache"  # the safetensors metadata entry holding {"key": ..., "meta": ...}
_WRITE_ERRORS = (OSError, SafetensorError)  # safetensors reports I/O failures (ENOSPC, EACCES) as SafetensorError


def user_cache_dir() -> Path:
    """$MATCHNET_CACHE, else ~/.cache/matchnet: the fallback for data folders that are read-only or full."""
    return Path(os.environ.get(ENV) or Path.home() / ".cache" / "matchnet").expanduser()


def cache_paths(root: str | os.PathLike, name: str) -> list[Path]:
    """Where the cache `name` of the data folder `root` may live, in the order tried: beside the data, then the
    user cache (its file name carries a hash of root's absolute path, so two data folders never share one)."""
    root = Path(root).expanduser()
    tag = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    return [root / name, user_cache_dir() / f"{tag}-{name}"]


def listing_key(paths: Iterable[str | os.PathLike], base: str | os.PathLike | None = None,
                extra: Any = None) -> str:
    """A hex digest of the files' names (relative to base when given), sizes and modification times, plus `extra`
    (anything JSON-able that also decides the cached content: version, image size...). Replacing, truncating,
    adding or removing a file changes it; reading the files does not. Missing files count as absent."""
    rows = []
    for p in paths:
        p = Path(p)
        try:
            st = p.stat()
        except OSError:
            continue
        name = str(p.relative_to(base)) if base is not None else str(p)
        rows.append((name, st.st_size, st.st_mtime_ns))
    rows.sort()
    digest = hashlib.sha256(json.dumps([rows, extra], separators=(",", ":"), default=str).encode())
    return digest.hexdigest()


def load_cached(root: str | os.PathLike, name: str, key: str) -> tuple[dict[str, torch.Tensor], Any] | None:
    """(tensors, meta) from the first cache of `root`/`name` whose key matches, or None. A stale, unreadable or
    corrupt cache file is skipped (and later overwritten by save_cached), never an error."""
    for path in cache_paths(root, name):
        try:
            with safe_open(str(path), framework="pt") as f:
                record = json.loads((f.metadata() or {}).get(_META, "null"))
                if not isinstance(record, dict) or record.get("key") != key:
                    continue  # stale: read only the header, not the tensors
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            return tensors, record.get("meta")
        except Exception:  # noqa: BLE001 -- absent, truncated, garbage, unreadable (0600 by another user)
            continue
    return None


def save_cached(root: str | os.PathLike, name: str, key: str,
                tensors: Mapping[str, torch.Tensor | np.ndarray], meta: Any = None) -> Path | None:
    """Write the cache atomically to the first place that takes it (see cache_paths); returns that path, or None
    (with one line on stderr) when no place could take it. meta is any JSON-able value, returned by load_cached."""
    tensors = {k: (torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v)
               .detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {_META: json.dumps({"key": key, "meta": meta})}
    failures = []
    for path in cache_paths(root, name):
        try:
            _atomic_save(path, tensors, metadata)
            return path
        except _WRITE_ERRORS as e:
            failures.append(f"{path.parent}: {_one_line(e)}")
    print(f"note: dataset cache not written ({'; '.join(failures)}); set {ENV} to a writable folder to cache it",
          file=sys.stderr)
    return None


def _atomic_save(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_with(path, lambda tmp: save_file(tensors, tmp, metadata=metadata), mode=readable_mode())


def readable_mode() -> int:
    """0666 less the umask: safetensors and memory maps create 0600, and a shared data folder needs others to read."""
    return 0o666 & ~_umask()


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask can only be read by setting it)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:160] if text else ''}"
