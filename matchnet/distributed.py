"""This process's place in a torchrun run, and the few collectives the training loop needs.

`torchrun --nproc_per_node=N` sets RANK/WORLD_SIZE; `init_distributed` then starts the process group (NCCL on
GPUs, gloo on CPUs). A plain `python` run starts nothing and every helper here is a no-op for it.

Seeds: rank r of a fresh run draws from `rank_seed(seed, r)` (rank 0 keeps the config's seed, so a 1-process
run is unchanged). A run resumed with another number of processes cannot continue the saved streams; each
rank then re-seeds from `resume_seed(seed, rank, step)`, which depends on all three.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: rank 0 of 1 unless torchrun started it."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device: str = "auto") -> Dist:
    """Start the process group when torchrun set RANK; a plain `python` run starts nothing."""
    if "RANK" not in os.environ:
        return Dist()
    if tdist.is_initialized():
        return current_dist()
    local = int(os.environ.get("LOCAL_RANK", 0))
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local)
    tdist.init_process_group("nccl" if cuda else "gloo")
    return Dist(tdist.get_rank(), tdist.get_world_size(), local)


def launch_rank() -> int:
    """The RANK torchrun gave this process (0 for a plain run), without starting a process group."""
    return int(os.environ.get("RANK", "0"))


def current_dist() -> Dist:
    if tdist.is_available() and tdist.is_initialized():
        return Dist(tdist.get_rank(), tdist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return Dist()


def close_distributed() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def resolve_device(name: str, dist: Dist | None = None) -> torch.device:
    """auto | cuda | cpu -> a torch device; under torchrun each rank takes the GPU of its LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for, but torch sees no CUDA device")
        return torch.device("cuda", (dist or current_dist()).local_rank)
    return torch.device(name)


def rank_seed(seed: int, rank: int) -> int:
    """Rank 0 keeps the config's seed (a 1-process run is unchanged); other ranks get their own streams."""
    return seed if rank == 0 else (seed * 1_000_003 + rank * 7_919) % (2 ** 63)


def resume_seed(seed: int, rank: int, step: int, stream: int = 0) -> int:
    """A seed for `stream` of `rank` from step `step` on: used when the saved streams cannot be continued."""
    digest = hashlib.blake2b(f"{seed},{rank},{step},{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % (2 ** 63)


def _comm_device(dist: Dist) -> torch.device:
    """Where a collective's tensors live: NCCL wants them on this rank's GPU, gloo on the CPU."""
    if tdist.get_backend() == "nccl":
        return torch.device("cuda", dist.local_rank)
    return torch.device("cpu")


def barrier(dist: Dist) -> None:
    if dist.enabled:
        tdist.barrier()


def all_mean(values: torch.Tensor, dist: Dist) -> torch.Tensor:
    """The mean of `values` over the ranks (every rank must call it, with the same shape)."""
    if not dist.enabled:
        return values
    out = values.to(_comm_device(dist), torch.float64)
    tdist.all_reduce(out)
    return (out / dist.world).to(values.device, values.dtype)


def all_gather_ints(values: list[int], dist: Dist) -> list[list[int]]:
    """Every rank's `values` (same length on every rank), indexed by rank."""
    if not dist.enabled:
        return [list(values)]
    mine = torch.tensor(values, dtype=torch.int64, device=_comm_device(dist))
    parts = [torch.empty_like(mine) for _ in range(dist.world)]
    tdist.all_gather(parts, mine)
    return [p.tolist() for p in parts]


def broadcast_text(text: str | None, dist: Dist) -> str | None:
    """Rank 0's text (None stays None) on every rank: an error one rank found, raised by all of them."""
    if not dist.enabled:
        return text
    dev = _comm_device(dist)
    data = (text or "").encode()
    size = torch.tensor([len(data) if text is not None else -1], dtype=torch.int64, device=dev)
    tdist.broadcast(size, 0)
    n = int(size)
    if n < 0:
        return None
    buf = torch.zeros(n, dtype=torch.uint8, device=dev)
    if dist.is_main:
        buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    if n:
        tdist.broadcast(buf, 0)
    return bytes(buf.cpu().tolist()).decode()


def agree_stop(signum: int | None, out_of_time: bool, dist: Dist) -> tuple[int | None, bool]:
    """Every rank stops at the same step if any rank was signalled (torchrun signals them all) or ran out of
    time (clocks differ a little between processes)."""
    if not dist.enabled:
        return signum, out_of_time
    flags = torch.tensor([signum or 0, int(out_of_time)], device=_comm_device(dist))
    tdist.all_reduce(flags, op=tdist.ReduceOp.MAX)
    return int(flags[0]) or None, bool(flags[1])


def gather_states(states: list[torch.Tensor], dist: Dist) -> list[list[torch.Tensor]]:
    """Every rank's random-generator states ([stream][rank]); rank 0 writes them all into the resume point."""
    if not dist.enabled:
        return [[s] for s in states]
    dev = _comm_device(dist)
    out = []
    for state in states:
        parts = [torch.empty_like(state, device=dev) for _ in range(dist.world)]
        tdist.all_gather(parts, state.to(dev))
        out.append([p.cpu() for p in parts])
    return out
