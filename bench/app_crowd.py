"""The demo under a crowd: N concurrent gradio_client clients send M /classify requests in all to `python app.py`
(its own process), each client with its own support sets and label names, in a mix of shapes. Not a test.

Records requests/s, latency (median, p90, p99), errors, cross-talk (a reply that is not the answer to the
client's own request: another client's labels, another shape's support set or query count), the server's
resident memory over the run, and CPU per request on each side (the clients run on the same machine here, so
their CPU competes with the server's).

Where the time went (issue 23's first run: 3.6 requests/s, median 8.6 s, with the server function's own median
at 128 ms): gradio_client makes every upload and call with a fresh httpx client, and each builds a new TLS
context (loading the CA bundle, even for an http:// URL). A 5-way 1-shot request uploads 6 files, so the
clients spent several times the server's CPU per request, all on the same two cores. Passing one shared
context (`Client(url, ssl_verify=ssl.create_default_context())`, which httpx takes as `verify`) removes most
of the client's share (docs/APP.md, "Under a crowd"). `--client-tls default` measures gradio_client as it comes.

    python bench/app_crowd.py --clients 32 --requests 500 --out docs/bench/app_crowd_cpu.json

Request mix (cycled per client): 5-way 1-shot with 1 query; 5-way 1-shot, FCE, 4 queries; 20-way 1-shot with 1
query; 5-way 5-shot with 2 queries, 4 requests of each in a row with the same support set and other queries,
as a script classifying many queries against one support set does (the server's support cache,
`support_cached` in the reply, is counted).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from matchnet.atomic import write_text  # noqa: E402

EXAMPLES = ROOT / "assets" / "examples" / "omniglot"
RUN = 4  # requests in a row with one support set (then the next shape): 3 of every 4 can hit the cache
# (name, way, shot, queries, fce)
MIX = [("5-way 1-shot, 1 query", 5, 1, 1, False), ("5-way 1-shot, FCE, 4 queries", 5, 1, 4, True),
       ("20-way 1-shot, 1 query", 20, 1, 1, False), ("5-way 5-shot, 2 queries", 5, 5, 2, False)]


def characters() -> list[list[Path]]:
    """The shipped example characters, each a sorted list of its 6 drawings (no torch, no matchnet.inference)."""
    chars = sorted(p for p in EXAMPLES.glob("*/character*") if p.is_dir())
    return [sorted(c.glob("*.png")) for c in chars]


def request_for(client: int, n: int, chars: list[list[Path]], mix: list[tuple] = MIX) -> dict:
    """Client `client`'s n-th request: support files, its own labels, queries, fce, and what the reply must hold."""
    name, way, shot, queries, fce = mix[(n // RUN + client) % len(mix)]  # every shape in flight at once
    picked = [(client * 7 + i) % len(chars) for i in range(way)]
    support = [p for c in picked for p in chars[c][:shot]]
    labels = [f"client{client}:{chars[c][0].parent.parent.name}/{chars[c][0].parent.name}" for c in picked
              for _ in range(shot)]
    query_classes = [picked[(n + q) % way] for q in range(queries)]
    query_files = [chars[c][shot + (n + q) % (len(chars[c]) - shot)] for q, c in enumerate(query_classes)]
    return {"kind": name, "support": support, "labels": labels, "queries": query_files, "fce": fce}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(port: int, app_args: list[str]) -> subprocess.Popen:
    from gradio_client import Client

    server = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port), *app_args],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while True:  # ready: the port accepts connections and the config is served
        try:
            Client(f"http://127.0.0.1:{port}/", verbose=False).close()
            return server
        except Exception:  # noqa: BLE001
            if server.poll() is not None:
                raise RuntimeError("the app did not start: " + server.stderr.read()) from None
            if time.time() > deadline:
                server.kill()
                raise RuntimeError("the app did not answer within 180 s") from None
            time.sleep(0.5)


def check(reply: dict, request: dict) -> str | None:
    """Why this reply is not the answer to this request, or None."""
    if reply.get("support_labels") != request["labels"]:
        return f"support_labels {str(reply.get('support_labels'))[:80]}"
    if len(reply.get("labels", [])) != len(request["queries"]) or not set(reply["labels"]) <= set(request["labels"]):
        return f"labels {reply.get('labels')} for {len(request['queries'])} queries"
    if len(reply.get("attention", [])) != len(request["queries"]) or \
            any(len(row) != len(request["support"]) for row in reply["attention"]):
        return "attention of another shape"
    return None


def crowd(url: str, clients: int, requests: int, warmup: int, server_pid: int, tls: str = "shared",
          mix: list[tuple] = MIX) -> dict:
    """tls "shared": every client's HTTP calls reuse one TLS context; "default": gradio_client as it comes,
    which builds a new one for every file it uploads and every call (see the module doc)."""
    from gradio_client import Client, handle_file

    options = {"ssl_verify": ssl.create_default_context()} if tls == "shared" else {}
    chars = characters()
    latencies: list[float] = []
    kinds: dict[str, list[float]] = {}
    errors: list[str] = []
    crosstalk: list[str] = []
    cached = 0
    counter = iter(range(requests))
    lock = threading.Lock()
    ready = threading.Barrier(clients + 1)

    def run(i: int) -> None:
        nonlocal cached
        client = Client(url, verbose=False, download_files=False, **options)
        try:
            for n in range(warmup):  # connections, first calls: not timed, not counted
                r = request_for(i, n, chars, mix)
                client.predict([handle_file(str(p)) for p in r["support"]], r["labels"],
                               [handle_file(str(p)) for p in r["queries"]], r["fce"], api_name="/classify")
        finally:
            ready.wait()
        n_own = 0
        while True:
            with lock:
                n = next(counter, None)
            if n is None:
                client.close()
                return
            r = request_for(i, n_own, chars, mix)
            n_own += 1
            t = time.perf_counter()
            try:
                out = client.predict([handle_file(str(p)) for p in r["support"]], r["labels"],
                                     [handle_file(str(p)) for p in r["queries"]], r["fce"], api_name="/classify")
            except Exception as e:  # noqa: BLE001
                with lock:
                    errors.append(f"client {i} ({r['kind']}): {type(e).__name__}: {str(e)[:200]}")
                continue
            ms = 1000 * (time.perf_counter() - t)
            problem = check(out, r)
            with lock:
                latencies.append(ms)
                kinds.setdefault(r["kind"], []).append(ms)
                cached += bool(out.get("support_cached"))
                if problem:
                    crosstalk.append(f"client {i} ({r['kind']}): {problem}")

    memory: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            memory.append((time.perf_counter(), rss_mb(server_pid)))

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    ready.wait()  # every client connected and warmed up
    rss_start = rss_mb(server_pid)
    start, server_cpu, client_cpu = time.perf_counter(), cpu_seconds(server_pid), time.process_time()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    server_cpu, client_cpu = cpu_seconds(server_pid) - server_cpu, time.process_time() - client_cpu
    done.set()
    sampler.join()
    rss = [m for _, m in memory] or [rss_start]
    ok = max(1, len(latencies))

    def pct(values: list[float], q: float) -> float | None:
        return round(statistics.quantiles(values, n=100)[q - 1], 1) if len(values) >= 2 else None

    return {
        "clients": clients, "requests": requests, "client_tls": tls, "mix": [m[0] for m in mix],
        "ok": len(latencies), "errors": len(errors),
        "error_samples": errors[:5], "crosstalk": len(crosstalk), "crosstalk_samples": crosstalk[:5],
        "requests_per_s": round(len(latencies) / wall, 2), "wall_s": round(wall, 1),
        "latency_ms": {"median": round(statistics.median(latencies), 1) if latencies else None,
                       "p90": pct(latencies, 90), "p99": pct(latencies, 99)},
        "latency_ms_by_kind": {k: {"n": len(v), "median": round(statistics.median(v), 1), "p90": pct(v, 90)}
                               for k, v in sorted(kinds.items())},
        "support_cached_replies": cached,
        "server_cpu_ms_per_request": round(1000 * server_cpu / ok, 1),
        "client_cpu_ms_per_request": round(1000 * client_cpu / ok, 1),
        "server_rss_mb": {"start": round(rss_start, 1), "max": round(max(rss), 1), "end": round(rss[-1], 1),
                          "first_quarter_mean": round(statistics.mean(rss[:max(1, len(rss) // 4)]), 1),
                          "last_quarter_mean": round(statistics.mean(rss[-max(1, len(rss) // 4):]), 1),
                          "samples": len(rss)},
    }


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import gradio
    import gradio_client

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "gradio": gradio.__version__, "gradio_client": gradio_client.__version__, "commit": commit or None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="Example: python bench/app_crowd.py --clients 8 --requests 60 --out "
                                            "/tmp/crowd.json (a short run to compare two settings)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=500, help="timed requests, over all clients")
    parser.add_argument("--warmup", type=int, default=1, help="untimed requests per client before the clock starts")
    parser.add_argument("--out", required=True, help="the JSON record to write, e.g. docs/bench/app_crowd_cpu.json")
    parser.add_argument("--client-tls", choices=["shared", "default"], default="shared",
                        help="shared: the clients reuse one TLS context (default); default: gradio_client as it "
                             "comes, a new TLS context per upload and call")
    parser.add_argument("--mix", choices=["all", "issue"], default="all",
                        help="all: the four shapes above; issue: 5-way 1-shot with 1 query only (issue 23's run)")
    parser.add_argument("--app-arg", action="append", default=[], metavar="ARG",
                        help="passed to app.py (repeatable), e.g. --app-arg=--checkpoint --app-arg=DIR")
    args = parser.parse_args()
    if args.clients < 1 or args.requests < 1:
        parser.exit(2, "app_crowd.py: --clients and --requests must be at least 1\n")
    port = free_port()
    load_start = os.getloadavg()
    server = start_server(port, args.app_arg)
    try:
        result = crowd(f"http://127.0.0.1:{port}/", args.clients, args.requests, args.warmup, server.pid,
                       args.client_tls, MIX if args.mix == "all" else MIX[:1])
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    record = {"command": "python bench/app_crowd.py " + " ".join(sys.argv[1:]), "date": time.strftime("%Y-%m-%d"),
              "machine": machine(), "load_average_at_start": [round(x, 2) for x in load_start],
              "load_average_at_end": [round(x, 2) for x in os.getloadavg()], **result}
    write_text(args.out, json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("requests_per_s", "latency_ms", "errors", "crosstalk",
                                             "server_cpu_ms_per_request", "client_cpu_ms_per_request",
                                             "server_rss_mb")}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
