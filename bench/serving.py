"""Serving benchmark: latency and throughput of `skiff serve` on 127.0.0.1, real HTTP.

One server process (uvicorn, as `skiff serve` starts it) on published models trained on
generated data; the load comes from a second process (asyncio, HTTP/1.1 keep-alive). Three
parts, all in one run so they share the machine's state:

1. closed loop: each endpoint at concurrency 1, 8 and 32 for `--seconds`; latency p50/p99
   and throughput, beside the same server's no-op endpoint (`GET /noop`) as the floor;
2. open loop at `--rate` requests/s (a request is sent on schedule whether or not earlier
   ones returned, and its latency counts from that schedule, so a stall is not hidden) for
   recommendations and conversion scoring, against the targets (p99 < 15 ms and < 10 ms);
3. a `--soak`-second run at `--rate` requests/s of both, during which a new recommender
   champion is published (hot reload): errors must stay at zero.

    .venv/bin/python bench/serving.py [--days 7 --sessions-per-day 4000] [--seconds 4]

The load average (os.getloadavg) is printed before and after: the machine may be shared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml.conversion import features
from ml.recommend.models import make_model
from tests.servers import free_port
from tests.test_serving import publish_models, register_recommender

Request = tuple[str, str, dict | None]  # method, path, JSON body
TARGETS_MS = {"recommendations": 15.0, "conversion": 10.0}


# --- the load generator (runs in its own process) ---------------------------------------------
# A minimal HTTP/1.1 keep-alive client on asyncio streams: httpx's own overhead (about 1 ms of
# CPU a request, more with many connections) would take a core of this 2-core machine.


def encode(request: Request) -> bytes:
    method, path, body = request
    payload = json.dumps(body).encode() if body is not None else b""
    head = f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n"
    if body is not None:
        head += f"content-type: application/json\r\ncontent-length: {len(payload)}\r\n"
    return (head + "\r\n").encode() + payload


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return int(head[9:12]), await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


def _version(raw: bytes, status: int, body: bytes) -> str | None:
    if status == 200 and raw.startswith(b"POST /v1/recommendations "):
        return json.loads(body)["model_version"]
    return None


async def _closed(port: int, requests: list[bytes], concurrency: int, seconds: float) -> dict:
    latencies: list[float] = []
    statuses: list[int] = []
    connections = [await Connection.open(port) for _ in range(concurrency)]
    deadline = time.perf_counter() + seconds

    async def worker(connection: Connection, offset: int) -> None:
        i = offset
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            try:
                status, _ = await connection.send(requests[i % len(requests)])
            except (OSError, asyncio.IncompleteReadError, ValueError):
                status, connection = -1, await Connection.open(port)
            latencies.append(time.perf_counter() - began)
            statuses.append(status)
            i += concurrency

    began = time.perf_counter()
    await asyncio.gather(*(worker(c, i) for i, c in enumerate(connections)))
    elapsed = time.perf_counter() - began
    for c in connections:
        c.close()
    return {"latencies": latencies, "statuses": statuses, "seconds": elapsed}


async def _open(port: int, requests: list[bytes], rate: float, seconds: float) -> dict:
    latencies: list[float] = []
    statuses: list[int] = []
    versions: list[str] = []
    idle: list[Connection] = [await Connection.open(port) for _ in range(16)]
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def one(raw: bytes, scheduled: float) -> None:
        status = -1
        for attempt in range(2):  # a reused idle connection may have been closed: retry once
            reused = bool(idle)
            connection = idle.pop() if reused else await Connection.open(port)
            try:
                status, body = await connection.send(raw)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                connection.close()
                if reused and attempt == 0:
                    continue
                break
            idle.append(connection)
            version = _version(raw, status, body)
            if version:
                versions.append(version)
            break
        latencies.append(loop.time() - scheduled)
        statuses.append(status)

    tasks = []
    for i in range(int(rate * seconds)):
        scheduled = start + i / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(requests[i % len(requests)], scheduled)))
    await asyncio.gather(*tasks)
    elapsed = loop.time() - start
    for c in idle:
        c.close()
    return {"latencies": latencies, "statuses": statuses, "seconds": elapsed, "versions": versions}


def _load(kind: str, port: int, requests: list[bytes], level: float, seconds: float, out) -> None:
    runner = _closed if kind == "closed" else _open
    out.put(asyncio.run(runner(port, requests, level, seconds)))


def load(kind: str, url: str, requests: list[Request], level: float, seconds: float) -> dict:
    """Run the load in a fresh process and return its raw results."""
    context = mp.get_context("spawn")
    out = context.Queue()
    port = int(url.rsplit(":", 1)[1])
    raw = [encode(r) for r in requests]
    proc = context.Process(target=_load, args=(kind, port, raw, level, seconds, out))
    proc.start()
    result = out.get()
    proc.join()
    return result


# --- requests -----------------------------------------------------------------------------


def request_sets(state: dict, n: int = 2000, seed: int = 0) -> dict[str, list[Request]]:
    """Realistic bodies: prefixes of generated sessions (events for conversion, viewed
    products for recommendations), known products, feedback on made-up exposures."""
    rng = random.Random(seed)
    views = [s for s in state["sessions"] if len(s) >= 2]
    recs = []
    for _ in range(n):
        session = rng.choice(views)
        end = rng.randint(1, len(session) - 1)
        recs.append(("POST", "/v1/recommendations", {"session_id": f"s{rng.random()}",
                                                     "items": session[:end], "k": 20}))  # fmt: skip
    examples = state["examples"]
    groups = [g for _, g in examples.groupby("session_key", sort=False)]
    conversion = []
    for _ in range(n):
        session = rng.choice(groups)
        end = rng.randint(1, min(len(session), 50))
        rows = session.head(end).to_dict("records")
        events = [{c: _plain(r[c]) for c in features.EVENT_COLUMNS} for r in rows]
        for e in events:
            e["event_at"] = features.to_ms(e["event_at"])
        conversion.append(
            ("POST", "/v1/conversion/score", {"session_id": f"c{rng.random()}", "events": events})
        )
    products = sorted({sku for s in views for sku in s})
    return {
        "noop": [("GET", "/noop", None)],
        "recommendations": recs,
        "conversion": conversion,
        "products": [
            ("GET", f"/v1/recommendations/products/{rng.choice(products)}", None) for _ in range(n)
        ],
        "feedback": [
            ("POST", "/v1/feedback", {"exposure_id": f"{rng.getrandbits(128):032x}", "action": a})
            for a in rng.choices(["click", "add", "purchase"], k=n)
        ],
    }


def _plain(value):
    """JSON-able: NaN and pandas NA become None, numpy numbers Python numbers."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if hasattr(value, "item"):
        return value.item()
    return None if str(value) in ("<NA>", "nan", "NaT") else value


# --- the run ------------------------------------------------------------------------------


def summary(result: dict) -> dict:
    ms = np.array(result["latencies"]) * 1000
    statuses = np.array(result["statuses"])
    failed = statuses[statuses != 200]
    return {
        "failures": dict(Counter(int(s) for s in failed)),  # status (-1: connection) -> count
        "requests": len(ms),
        "rps": len(ms) / result["seconds"],
        "p50": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        "p99": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
        "errors": int((statuses != 200).sum()),
    }


def start_server(home: Path, log: Path) -> tuple[str, subprocess.Popen]:
    port = free_port()
    env = {**os.environ, "SKIFF_HOME": str(home), "SKIFF_ENV": "local"}
    env.pop("SKIFF_ARTIFACTS_URL", None)
    skiff = str(Path(sys.executable).parent / "skiff")
    proc = subprocess.Popen(
        [skiff, "serve", "--port", str(port), "--reload-seconds", "1"],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return url, proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"the server did not get ready:\n{log.read_text()[-3000:]}")


def measured(server: psutil.Process, *run) -> dict:
    """`load(*run)`'s summary, with the server's CPU time per request and the load average at
    the end: a busy machine slows every request, a slow server costs CPU."""
    before = sum(server.cpu_times()[:2])
    result = summary(load(*run))
    spent = sum(server.cpu_times()[:2]) - before
    return {**result, "server_cpu_ms": spent * 1000 / max(result["requests"], 1), "load": loadavg()}


def server_errors(url: str) -> int:
    """5xx answers the server counted over the whole run (its /metrics)."""
    text = httpx.get(f"{url}/metrics").text
    return int(
        sum(float(line.split()[-1]) for line in text.splitlines()
            if line.startswith("skiff_http_errors_total{"))
    )  # fmt: skip


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--sessions-per-day", type=int, default=4000)
    parser.add_argument("--seconds", type=float, default=4, help="per closed-loop cell")
    parser.add_argument("--rate", type=float, default=200, help="open-loop requests/s")
    parser.add_argument("--open-seconds", type=float, default=15)
    parser.add_argument("--soak", type=float, default=60, help="seconds of the reload run")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="skiff-bench-serving-") as tmp:
        home = Path(tmp) / "home"
        began = time.perf_counter()
        state = publish_models(
            home, Path(tmp) / "landing", challengers=False,
            days=args.days, sessions=args.sessions_per_day,
        )  # fmt: skip
        requests = request_sets(state)
        print(
            f"published models trained on {args.days} x {args.sessions_per_day} generated "
            f"sessions ({len(state['sessions']):,} view sessions) in "
            f"{time.perf_counter() - began:.0f} s; load average {loadavg()}",
            flush=True,
        )
        url, proc = start_server(home, Path(tmp) / "server.log")
        server = psutil.Process(proc.pid)
        try:
            load("closed", url, requests["noop"], 8, 1)  # warm-up
            rows = []
            for concurrency in (1, 8, 32):
                floor = None
                for name in ("noop", "recommendations", "conversion", "products", "feedback"):
                    s = measured(server, "closed", url, requests[name], concurrency, args.seconds)
                    floor = floor or s["rps"]
                    rows.append((name, concurrency, s, s["rps"] / floor))
                    print(f"  {name} c={concurrency}: {s}", flush=True)
            opened = {
                name: measured(server, "open", url, requests[name], args.rate, args.open_seconds)
                for name in ("recommendations", "conversion")
            }
            soak = soak_with_reload(url, requests, state, args)
            soak["server_errors"] = server_errors(url)
            server_log = (Path(tmp) / "server.log").read_text()
        finally:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=30)
    report(rows, opened, soak, args, server_log)


def soak_with_reload(url: str, requests: dict, state: dict, args) -> dict:
    """Both endpoints at the open-loop rate for args.soak seconds; a new recommender champion
    is registered and published a third of the way in."""
    mixed = [r for pair in zip(requests["recommendations"], requests["conversion"],
                               strict=True) for r in pair]  # fmt: skip
    result: dict = {}
    runner = threading.Thread(
        target=lambda: result.update(load("open", url, mixed, args.rate, args.soak))
    )
    runner.start()
    time.sleep(args.soak / 3)
    registry = state["registry"]
    reloaded_at = time.perf_counter()
    model = make_model("sknn", k_neighbors=50).fit(state["sessions"])
    new = register_recommender(registry, model)
    registry.assign("recommender", "champion", new, "benchmark hot reload")
    registry.publish("recommender", state["published"], roles=("champion",))
    published_after = time.perf_counter() - reloaded_at
    runner.join()
    versions = result["versions"]
    return {
        **summary(result),
        "new_version": new,
        "served_new": versions.count(new),
        "served_old": len(versions) - versions.count(new),
        "publish_seconds": published_after,
    }


def report(rows: list, opened: dict, soak: dict, args, server_log: str) -> None:
    print(f"\nload average after: {loadavg()} (2 cores)\n")
    print(
        "| endpoint | concurrency | requests | req/s | ratio to no-op | p50 ms | p99 ms "
        "| server CPU ms/req | errors |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, concurrency, s, ratio in rows:
        print(
            f"| {name} | {concurrency} | {s['requests']:,} | {s['rps']:,.0f} | {ratio:.2f} "
            f"| {s['p50']:.2f} | {s['p99']:.2f} | {s['server_cpu_ms']:.2f} | {s['errors']} |"
        )
    print(f"\nOpen loop at {args.rate:.0f} req/s for {args.open_seconds:.0f} s each:\n")
    print(
        "| endpoint | requests | achieved req/s | p50 ms | p99 ms | target p99 | met "
        "| server CPU ms/req | load average | errors |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---:|---|---:|")
    for name, s in opened.items():
        target = TARGETS_MS[name]
        print(
            f"| {name} | {s['requests']:,} | {s['rps']:.0f} | {s['p50']:.2f} | {s['p99']:.2f} "
            f"| < {target:.0f} ms | {'yes' if s['p99'] < target else 'NO'} "
            f"| {s['server_cpu_ms']:.2f} | {s['load']} | {s['errors']} |"
        )
    reloads = server_log.count("loaded recommender champion")
    print(
        f"\nSoak: {soak['requests']:,} requests in {args.soak:.0f} s at {args.rate:.0f} req/s "
        f"(recommendations and conversion alternating), {soak['errors']} errors "
        f"({soak['server_errors']} 5xx counted by the server over the whole run), p50 "
        f"{soak['p50']:.2f} ms, p99 {soak['p99']:.2f} ms; a new champion published "
        f"({soak['publish_seconds']:.1f} s to train, register and publish, in this process) "
        f"and hot-reloaded ({reloads - 1} reload): {soak['served_old']:,} recommendations "
        f"by the old version, {soak['served_new']:,} by the new one."
    )
    print(json.dumps({"soak": soak}, default=str))


if __name__ == "__main__":
    main()
