"""Polls per second with 1, 2 and 3 replicas on PostgreSQL, and one daemon on SQLite.

Every replica is a real `clausewatch run` process. The page server (its own process) counts
requests; documents are due every second, so the replicas are saturated and the request rate
over a fixed window is their throughput. Prints a table and writes bench/results/replicas.json.

    .venv/bin/python bench/replicas.py [--documents 600] [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from tempfile import TemporaryDirectory

REPO = Path(__file__).resolve().parent.parent
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"

COUNTER = r'''
import sys
from aiohttp import web
hits = 0
async def page(request):
    global hits
    hits += 1
    name = request.match_info["name"]
    return web.Response(text=f"<html><body><main><h1>Policy {name}</h1><p>We collect the "
                             f"data of document {name}.</p></main></body></html>",
                        content_type="text/html")
async def count(request):
    return web.json_response({"hits": hits})
app = web.Application()
app.router.add_get("/doc/{name}", page)
app.router.add_get("/hits", count)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> dict:  # type: ignore[type-arg]
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (loopback)
        return json.loads(response.read())


def wait(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            get(url)
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer")


def config(folder: Path, store: list[str], port: int, pages: int, documents: int) -> Path:
    lines = [f'data_dir = "{folder / "data"}"', *store,
             "[scheduler]", 'default_interval = "1s"', 'jitter = "0s"', "workers = 8",
             'lease = "30s"', "[fetch]", "retries = 0", 'per_host_delay = "0s"',
             "robots = false", "concurrency = 32", "per_host_concurrency = 32",
             "[http]", f'listen = "127.0.0.1:{port}"', "[log]", 'level = "warning"']
    for n in range(documents):
        lines += ["[[documents]]", f'id = "bench/doc-{n:04d}"', 'platform = "Bench"',
                  f'title = "Document {n}"', f'url = "http://127.0.0.1:{pages}/doc/{n:04d}"',
                  'select = "main"']
    path = folder / f"{uuid.uuid4().hex[:6]}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def measure(replicas: int, postgres: bool, documents: int, seconds: float) -> dict[str, object]:
    import psycopg

    schema = f"cw_bench_{uuid.uuid4().hex[:8]}"
    with TemporaryDirectory() as tmp:
        folder = Path(tmp)
        pages = free_port()
        server = subprocess.Popen([sys.executable, "-c", COUNTER, str(pages)])
        processes = []
        try:
            wait(f"http://127.0.0.1:{pages}/hits")
            store = [f'[store]\nurl = "{PG_URL}"\nschema = "{schema}"'] if postgres else []
            for n in range(replicas):
                port = free_port()
                path = config(folder, store, port, pages, documents)
                processes.append((subprocess.Popen(
                    [sys.executable, "-m", "daemon.cli", "run", "-c", str(path)], cwd=REPO,
                    env={**os.environ, "CLAUSEWATCH_REPLICA_ID": f"r{n + 1}"},
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), port))
            for _, port in processes:
                wait(f"http://127.0.0.1:{port}/readyz")
            time.sleep(min(10.0, seconds / 2))  # past the first-poll spread and the baselines
            before = get(f"http://127.0.0.1:{pages}/hits")["hits"]
            started = time.monotonic()
            time.sleep(seconds)
            after = get(f"http://127.0.0.1:{pages}/hits")["hits"]
            elapsed = time.monotonic() - started
        finally:
            for process, _ in processes:
                process.send_signal(signal.SIGTERM)
            for process, _ in processes:
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
            server.terminate()
            server.wait(10)
            if postgres:
                with psycopg.connect(PG_URL, autocommit=True) as conn:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    return {"store": "postgresql" if postgres else "sqlite", "replicas": replicas,
            "documents": documents, "seconds": round(elapsed, 1),
            "polls_per_second": round((after - before) / elapsed, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--documents", type=int, default=600)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--max-replicas", type=int, default=3)
    args = parser.parse_args()
    rows = [measure(1, False, args.documents, args.seconds)]
    rows += [measure(n, True, args.documents, args.seconds)
             for n in range(1, args.max_replicas + 1)]
    print(f"{'store':<11} {'replicas':>8} {'documents':>9} {'polls/s':>8}")
    for row in rows:
        print(f"{row['store']:<11} {row['replicas']:>8} {row['documents']:>9} "
              f"{row['polls_per_second']:>8}")
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "replicas.json").write_text(json.dumps(rows, indent=2))
    print(f"cpu cores: {os.cpu_count()} (every replica, PostgreSQL and the page server share them)")


if __name__ == "__main__":
    main()
