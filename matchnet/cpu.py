"""The CPU as a training device: which speed-ups a CPU gets, and the malloc settings that keep it fast.

Measured on a 2-core AMD EPYC (Zen 4, AVX-512 with AVX512-BF16), torch 2.14.1, in docs/BENCHMARKS.md
("This machine's CPU"): NHWC convolutions (`channels_last`) and bf16 autocast each pay on such a CPU; glibc's
default malloc returns freed activations to the kernel after every step, which makes larger steps slower.

- bf16 autocast (`amp = true`) is applied on CUDA and on CPUs with native bf16 arithmetic (AVX512-BF16 or
  AMX); elsewhere bf16 is emulated and slower than fp32, so a config's `amp` is ignored there.
- `MALLOC_SETTINGS` must be in the environment when the process starts (glibc reads them once):
  `train/run.py` re-executes itself with them on Linux unless either variable is already set.
"""
from __future__ import annotations

import os
import platform
import sys

# torch is imported inside the functions: train/run.py re-executes itself before paying for the import.

# Keep freed memory in the heap (trim threshold 64 GiB) and serve large blocks from it (mmap threshold 4 GiB)
# instead of mmap/munmap per activation: docs/bench/train_speed_cpu_malloc.json.
MALLOC_SETTINGS = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "68719476736"}
# Set by train/run.py on the re-executed process, so that it never re-executes twice.
REEXEC_MARK = "MATCHNET_MALLOC_SET"


def native_bf16() -> bool:
    """True on CPUs with bf16 arithmetic in hardware (AVX512-BF16, AMX), where autocast to bf16 pays."""
    import torch

    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def use_amp(amp: bool, device) -> bool:
    """Whether a config's `amp = true` (bf16 autocast) is applied on `device`."""
    return amp and (device.type == "cuda" or (device.type == "cpu" and native_bf16()))


def malloc_tuned() -> bool:
    """Whether this process started with the malloc settings (or the user's own values for them)."""
    return any(key in os.environ for key in MALLOC_SETTINGS)


def reexec_with_malloc_settings(argv: list[str] | None = None) -> None:
    """Replace this process by itself (same PID, same arguments) with MALLOC_SETTINGS in the environment.

    Linux/glibc only; a no-op when the user set either variable or MATCHNET_NO_MALLOC_TUNING=1. Call first
    thing in a script's __main__ block, before torch is imported."""
    if (platform.system() != "Linux" or malloc_tuned() or os.environ.get(REEXEC_MARK)
            or os.environ.get("MATCHNET_NO_MALLOC_TUNING") == "1" or platform.libc_ver()[0] != "glibc"):
        return
    env = {**os.environ, **MALLOC_SETTINGS, REEXEC_MARK: "1"}
    # sys.orig_argv keeps the interpreter's own flags (python -u ..., as torchrun starts its workers)
    argv = list(getattr(sys, "orig_argv", [sys.executable, *sys.argv])) if argv is None else argv
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, argv, env)
    except OSError:  # cannot re-execute (an unusual interpreter path): run as is, only slower
        return


def configure_threads() -> None:
    """One inter-op thread (torch's default is one per core): on a 2-core CPU the Conv-4 trains 1.2x faster
    (docs/bench/cpu_speed.json, rows r2 -> r3); intra-op threads stay torch's default (one per core).
    MATCHNET_INTEROP_THREADS overrides it. A no-op once torch has started parallel work."""
    import torch

    try:
        torch.set_num_interop_threads(int(os.environ.get("MATCHNET_INTEROP_THREADS", "1")))
    except (RuntimeError, ValueError):  # already set, or parallel work has begun: leave it as it is
        pass


def describe() -> str:
    """One line for logs and records: threads, bf16 and malloc settings of this CPU process."""
    import torch

    return (f"{torch.get_num_threads()} intra-op / {torch.get_num_interop_threads()} inter-op threads, "
            f"bf16 {'native' if native_bf16() else 'emulated'}, "
            f"malloc {'tuned' if malloc_tuned() else 'glibc defaults'}")
