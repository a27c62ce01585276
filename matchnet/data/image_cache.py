"""Decoding a list of image files once into one uint8 array on disk, memory-mapped on every later load.

Every image is decoded (in parallel processes), converted to RGB, resized to image_size x image_size and stored
in one .npy array [images, 3, S, S] (60,000 x 3 x 84 x 84 = 1.27 GB for miniImageNet), written through
matchnet.atomic and memory-mapped copy-on-write on load. A small safetensors file (matchnet.data.cache) keyed
on the files' names, sizes and modification times records where the array is and what was skipped.

Under torchrun, rank 0 alone decodes and writes the cache while the other ranks wait at a barrier, then they
read it: one decode and one gigabyte file, not one per rank. A rank that finds no cache after the wait (a
machine that does not share rank 0's data folder, or cache = false) decodes for itself, as a single process does.
The wait is bounded by the process group's timeout (torch.distributed's default is minutes): for a dataset that
takes longer to decode, build the cache once with a plain single-process run first.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from pathlib import Path

import numpy as np
import torch
import torch.distributed as tdist
from tqdm import tqdm

from ..atomic import atomic_path
from .cache import cache_paths, listing_key, load_cached, readable_mode, save_cached
from .decode import Decoded, decode_image, report
from .files import note

CACHE_VERSION = 1


def decode_files(files: list[Path], base: Path, cache_root: Path, tag: str, key_extra: dict, opts: dict) -> Decoded:
    """Decode `files` (or read the cache made from exactly these files) into one uint8 array.

    In a torch.distributed job the cache is made by rank 0 only; the others wait, then read it (and decode
    themselves only if rank 0 could not write one)."""
    if not (opts["cache"] and tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1):
        return _decode_or_load(files, base, cache_root, tag, key_extra, opts)
    if tdist.get_rank() == 0:
        try:
            return _decode_or_load(files, base, cache_root, tag, key_extra, opts)
        finally:  # also when decoding failed: the others then find no cache and report the problem themselves
            tdist.barrier()
    tdist.barrier()
    return _decode_or_load(files, base, cache_root, tag, key_extra, {**opts, "progress": False})


def _decode_or_load(files: list[Path], base: Path, cache_root: Path, tag: str, key_extra: dict,
                    opts: dict) -> Decoded:
    size, resize = opts["image_size"], opts["resize"]
    name = f"matchnet_cache_{tag}_{size}{'_crop' if resize == 'crop' else ''}"
    shape = (len(files), 3, size, size)
    if not opts["cache"]:
        return _decode_into(np.empty(shape, dtype=np.uint8), files, base, tag, opts)
    key = listing_key(files, base=base, extra={"version": CACHE_VERSION, "size": size, "resize": resize,
                                               **key_extra})
    hit = load_cached(cache_root, name + ".safetensors", key)
    if hit is not None:
        tensors, meta = hit
        try:
            images = np.load(meta["npy"], mmap_mode="c", allow_pickle=False)  # copy-on-write: never writes back
            if images.shape == shape and images.dtype == np.uint8:
                decoded = Decoded(images, tensors["sums"].numpy(), tensors["ok"].numpy(), meta["skipped"],
                                  meta["converted"])
                report(decoded, tag, from_cache=True)
                return decoded
        except (OSError, ValueError, KeyError, TypeError):
            pass  # the big file went missing or is damaged: decode again
    with contextlib.ExitStack() as output:
        opened = _open_output(output, cache_root, f"{name}.{key[:16]}.npy", shape)
        decoded = _decode_into(opened[1] if opened else np.empty(shape, dtype=np.uint8), files, base, tag, opts)
        if opened:
            decoded.images.flush()
            try:
                output.close()  # fsync, permissions, rename: the finished file appears whole or not at all
            except OSError as e:
                note(f"cache not written ({e}); the images are used from memory this time")
                return decoded
    if opened:
        final = opened[0]
        # The small file records the big one's absolute path: each may have gone beside the data or to the user
        # cache, independently.
        save_cached(cache_root, name + ".safetensors", key, {"sums": decoded.sums, "ok": torch.from_numpy(decoded.ok)},
                    {"npy": str(final.resolve()), "skipped": decoded.skipped, "converted": decoded.converted})
        decoded.images = np.load(final, mmap_mode="c", allow_pickle=False)
        _remove_stale(final)
    return decoded


def _decode_job(job: tuple[str, int, str]) -> tuple[np.ndarray | None, str, str]:
    return decode_image(*job)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _decode_into(images: np.ndarray, files: list[Path], base: Path, tag: str, opts: dict) -> Decoded:
    """Decode every file into `images` (an array or a memory map), in worker processes when there are many."""
    size, resize = opts["image_size"], opts["resize"]
    sums = np.zeros((len(files), 2, 3), dtype=np.float64)
    ok = np.zeros(len(files), dtype=bool)
    skipped, converted = [], {}
    jobs = [(str(f), size, resize) for f in files]
    workers = opts["workers"] or (os.cpu_count() or 1)
    workers = 1 if len(files) < 64 else min(workers, len(files) // 16 or 1)
    desc = f"decoding {tag} ({len(files):,} images, {workers} process{'es' if workers > 1 else ''})"
    # workers ignore Ctrl-C: the main process alone turns it into one line (a traceback per worker otherwise)
    pool = multiprocessing.get_context().Pool(workers, initializer=_ignore_sigint) if workers > 1 else None
    try:
        with tqdm(total=len(files), desc=desc, unit="img", disable=not opts["progress"]) as bar:
            results = pool.imap(_decode_job, jobs, chunksize=32) if pool else map(_decode_job, jobs)
            for i, (array, error, mode) in enumerate(results):
                if array is None:
                    rel = files[i].relative_to(base) if files[i].is_relative_to(base) else files[i]
                    skipped.append([str(rel), error])
                else:
                    images[i] = array
                    x = array.reshape(3, -1).astype(np.float64) / 255
                    sums[i, 0], sums[i, 1] = x.sum(1), (x * x).sum(1)
                    ok[i] = True
                    if mode != "RGB":
                        converted[mode] = converted.get(mode, 0) + 1
                bar.update(1)
    finally:
        if pool:
            pool.terminate()
            pool.join()
    decoded = Decoded(images, sums, ok, skipped, converted)
    report(decoded, tag, from_cache=False)
    return decoded


def _open_output(output: contextlib.ExitStack, cache_root: Path, name: str,
                 shape: tuple[int, ...]) -> tuple[Path, np.memmap] | None:
    """(final path, a memory map of its temporary file) in the first place that takes it (beside the data, else
    the user cache); the temporary's fate (renamed or removed) is left to `output`. None: kept in memory."""
    for path in cache_paths(cache_root, name):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.ExitStack() as attempt:
                tmp = attempt.enter_context(atomic_path(path, mode=readable_mode()))
                images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
                output.push(attempt.pop_all())  # opened: from here on `output` finishes or removes it
                return path, images
        except OSError:
            continue
    note(f"the decoded images could not be cached beside {cache_root} or in the user cache; kept in memory")
    return None


def _remove_stale(final: Path) -> None:
    """Older caches of the same dataset and size (other keys) are dead weight of a gigabyte or so: remove them."""
    stem = final.name.rsplit(".", 2)[0]
    for other in final.parent.glob(f"{stem}.*.npy"):
        if other != final:
            with contextlib.suppress(OSError):
                other.unlink(missing_ok=True)
