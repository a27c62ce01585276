"""Latency of the demo (app.py) on this machine's CPU. Not a test.

1. Server side, no HTTP: time per query for 5-way 1-shot and 20-way 5-shot, with the support set cached
   (one forward pass over the query) and uncached (decode + embed the support set, then the query); for the
   model alone, the /classify handler and the UI's live-update handler (which also draws the figures).
2. Concurrency: the app runs in its own process; C gradio_client clients send R requests in all to
   /classify, each client with its own support set and its own label names. Reports errors, p50/p95
   latency, and cross-talk: any response naming labels that the client did not send. The clients are
   gradio_client as it comes (a new TLS context per upload: most of their CPU); bench/app_crowd.py is the
   crowd benchmark with a JSON record, a mix of request shapes and both client settings.

    python bench/app_latency.py [--clients 32] [--requests 500] [--reps 200]
"""
from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import app  # noqa: E402
from matchnet import inference as inf  # noqa: E402

EXAMPLES = inf.list_examples(ROOT / "assets" / "examples" / "omniglot")
CHARS = sorted(EXAMPLES)


def episode(way: int, shot: int, offset: int = 0) -> tuple[list[Path], list[str], list[Path]]:
    chars = [CHARS[(offset + i) % len(CHARS)] for i in range(way)]
    support = [p for c in chars for p in EXAMPLES[c][:shot]]
    labels = [c for c in chars for _ in range(shot)]
    return support, labels, [EXAMPLES[c][shot] for c in chars]


def timed(fn, reps: int) -> tuple[float, float]:
    """(median, p95) in ms."""
    fn()  # warm up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times), float(np.percentile(times, 95))


def server_side(ui: app.App, reps: int, threads: int, model_only: bool) -> list[tuple[str, float, float]]:
    """Rows of (path, median ms, p95 ms); uncached paths get reps // 4 repetitions (they are 10-100x slower)."""
    torch.set_num_threads(threads)
    few = max(5, reps // 4)
    rows = []
    for way, shot in [(5, 1), (20, 5)]:
        support, labels, queries = episode(way, shot)
        images = np.stack([inf.preprocess(p) for p in support])
        one = [str(queries[0])]
        for key in ("base", "fce"):
            model, tag = ui.models[key], f"{way}-way {shot}-shot, {app.MODEL_NAMES[key]}"
            xq = inf.preprocess(queries[0])[None]
            entry = inf.EmbeddedSupport(model, images, labels)
            rows.append((f"{tag}: model, support cached", *timed(lambda: entry.classify(xq), reps)))
            rows.append((f"{tag}: model, support uncached",
                         *timed(lambda: inf.EmbeddedSupport(model, images, labels).classify(xq), few)))
            if model_only:
                continue
            state = app.ApiSession()
            files = [str(p) for p in support]
            fce = key == "fce"
            rows.append((f"{tag}: /classify handler, support cached",
                         *timed(lambda: app.classify_files(ui.models, files, labels, one, fce, state), reps)))
            rows.append((f"{tag}: /classify handler, support uncached",
                         *timed(lambda: app.classify_files(ui.models, files, labels, one, fce, app.ApiSession()),
                                few)))
        if model_only:
            continue
        s = app.Session()
        s.n_way, s.k_shot, s.names = way, shot, app.DEFAULT_NAMES[:way]
        s.slots = {(c, j): images[c * shot + j] for c in range(way) for j in range(shot)}
        canvas = np.full((256, 256), 255, np.uint8)
        canvas[60:200, 120:134] = 0
        pad = {"composite": canvas}
        rows.append((f"{way}-way {shot}-shot: UI live update (preprocess, classify, figures), cached",
                     *timed(lambda: ui.on_query_drawn(pad, s), reps)))
    return rows


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def concurrency(clients: int, requests: int) -> dict:
    from gradio_client import Client, handle_file

    port = free_port()
    server = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 120
        while True:  # readiness: the port accepts connections and the config is served
            try:
                Client(url, verbose=False)
                break
            except Exception:  # noqa: BLE001
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError("the app did not start: " + (server.stderr.read() if server.poll() else ""))
                time.sleep(0.5)
        latencies: list[float] = []
        errors: list[str] = []
        crosstalk: list[str] = []
        counter = iter(range(requests))
        lock = threading.Lock()

        def run(i: int) -> None:
            client = Client(url, verbose=False, download_files=False)
            support, labels, queries = episode(5, 1, offset=i)
            mine = [f"client{i}:{label}" for label in labels]  # names no other client sends
            files = [handle_file(str(p)) for p in support]
            while True:
                with lock:
                    n = next(counter, None)
                if n is None:
                    return
                query = queries[n % len(queries)]
                t = time.perf_counter()
                try:
                    out = client.predict(files, mine, [handle_file(str(query))], False, api_name="/classify")
                except Exception as e:  # noqa: BLE001
                    with lock:
                        errors.append(f"{type(e).__name__}: {e}")
                    continue
                elapsed = 1000 * (time.perf_counter() - t)
                with lock:
                    latencies.append(elapsed)
                    if out["support_labels"] != mine or not set(out["labels"]) <= set(mine):
                        crosstalk.append(f"client {i} got {out['labels']}")

        start, server_cpu, client_cpu = time.perf_counter(), cpu_seconds(server.pid), time.process_time()
        threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        server_cpu, client_cpu = cpu_seconds(server.pid) - server_cpu, time.process_time() - client_cpu
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {"clients": clients, "requests": requests, "ok": len(latencies), "errors": len(errors),
            "error_samples": errors[:3], "crosstalk": len(crosstalk), "crosstalk_samples": crosstalk[:3],
            "p50_ms": float(np.percentile(latencies, 50)) if latencies else None,
            "p95_ms": float(np.percentile(latencies, 95)) if latencies else None,
            "throughput_per_s": len(latencies) / wall, "wall_s": wall,
            "server_cpu_ms_per_request": 1000 * server_cpu / max(1, len(latencies)),
            "client_cpu_ms_per_request": 1000 * client_cpu / max(1, len(latencies))}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--reps", type=int, default=200)
    args = parser.parse_args()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"# {cpu}, {len(os.sched_getaffinity(0))} cores, torch {torch.__version__}, "
          f"python {platform.python_version()}, load average {os.getloadavg()[0]:.1f} at start")
    ui = app.App()  # sets torch to 1 thread, as the app runs
    ui.build()
    for threads in (1, 2):  # the app's setting, then torch's default on this machine: the model alone
        print(f"\n## server side, torch threads = {threads}: ms per query\n")
        print("| path | median ms | p95 ms |\n|---|---|---|")
        for name, med, p95 in server_side(ui, args.reps, threads, model_only=threads != 1):
            print(f"| {name} | {med:.1f} | {p95:.1f} |", flush=True)
    torch.set_num_threads(1)
    if args.clients and args.requests:
        r = concurrency(args.clients, args.requests)
        print(f"\n## {r['clients']} concurrent gradio_client clients, {r['requests']} /classify requests "
              "(5-way 1-shot, one query each, support uploaded with every request)\n")
        for key, value in r.items():
            print(f"- {key}: {round(value, 1) if isinstance(value, float) else value}")


if __name__ == "__main__":
    main()
