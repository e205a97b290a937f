"""Steady state: one daemon watching many documents with short intervals, for a few minutes.

The store is first filled with a baseline (`clausewatch check`; the pass section's store when
it ran at the same N, settled with one more pass). Then `clausewatch run` polls every document on a short interval
while the page server rotates markup on some pages and changes the text of a few. Reported:
polls per second sustained, scheduler lag (mean and p99 from its histogram), queue depth,
and RSS over the run (start after warm-up, peak, end, slope over the second half).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import contenders
import daemon_proc
import pages
import procstats

WARMUP_SECONDS = 20.0
SCRAPE_EVERY = 10.0
TEXT_SHARE = 0.01  # documents whose text changes every other poll
MARKUP_SHARE = 0.10  # documents whose markup rotates every poll


def run(args: argparse.Namespace, workdir: Path, *, log: Callable[[str], None],
        server: Any, reuse: contenders.ClauseWatchTool | None = None) -> dict[str, Any]:
    """The steady section of bench/perf.py (`server` is the running page server)."""
    docs = args.steady_docs
    triples = pages.load_triples(args.corpus)
    workdir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"docs": docs, "interval_s": args.steady_interval,
                              "seconds": args.steady_seconds, "text_share": TEXT_SHARE,
                              "markup_share": MARKUP_SHARE}
    # The steady rotation starts from every document at its noise snapshot: settle there.
    server.phase("noise")
    if reuse is not None and reuse.docs == docs:
        data_dir = reuse.workdir
        log(f"steady: settling the pass section's store ({docs:,} documents)")
        result["settle"] = reuse.run_pass("settle").row()
    else:
        data_dir = workdir
        tool = contenders.ClauseWatchTool(workdir, extract_processes=args.extract_processes)
        tool.setup(server.url, docs, triples)
        log(f"steady: baseline pass over {docs:,} documents")
        result["settle"] = tool.run_pass("baseline").row()
    port = daemon_proc.free_port()
    config = workdir / "steady.toml"
    config.write_text(contenders.write_config(
        data_dir, server.url, docs, triples, interval=args.steady_interval, jitter=1.0,
        listen=f"127.0.0.1:{port}", workers=args.steady_workers,
        extract_processes=args.extract_processes))
    server.phase("steady", share=TEXT_SHARE, markup=MARKUP_SHARE)
    daemon = daemon_proc.DaemonProcess(config=config, port=port,
                                       log_path=workdir / "steady-daemon.log")
    log(f"steady: daemon over {docs:,} documents, interval {args.steady_interval:.0f} s, "
        f"for {args.steady_seconds:.0f} s")
    started_at = time.monotonic()
    daemon.start()
    ready_s = time.monotonic() - started_at
    scrapes: list[dict[str, Any]] = []
    cpu_start = procstats.cpu_seconds(daemon.pid)
    try:
        with procstats.RssSampler(daemon.pid, every=1.0) as rss:
            t0 = time.monotonic()
            first = daemon.metrics()
            scrapes.append(_scrape(0.0, first, rss))
            while time.monotonic() - t0 < args.steady_seconds:
                time.sleep(min(SCRAPE_EVERY, max(0.0, args.steady_seconds -
                                                 (time.monotonic() - t0))))
                scrapes.append(_scrape(time.monotonic() - t0, daemon.metrics(), rss))
            last = daemon.metrics()
            elapsed = time.monotonic() - t0
            cpu = procstats.cpu_seconds(daemon.pid) - cpu_start
    finally:
        drain = daemon.stop()
    polls = daemon_proc.metric_sum(last, "clausewatch_captures_total") - \
        daemon_proc.metric_sum(first, "clausewatch_captures_total")
    lag_sum = last.get("clausewatch_scheduler_lag_seconds_sum", 0.0) - \
        first.get("clausewatch_scheduler_lag_seconds_sum", 0.0)
    lag_count = last.get("clausewatch_scheduler_lag_seconds_count", 0.0) - \
        first.get("clausewatch_scheduler_lag_seconds_count", 0.0)
    series = [(t - rss.samples[0][0], v) for t, v in rss.samples]
    after_warmup = [v for t, v in series if t >= WARMUP_SECONDS] or [v for _, v in series]
    half = [(t, v) for t, v in series if t >= series[-1][0] / 2]
    result.update({
        "ready_s": round(ready_s, 1),
        "polls": int(polls),
        "polls_per_s": round(polls / elapsed, 1) if elapsed else None,
        "offered_polls_per_s": round(docs / args.steady_interval, 1),
        "outcomes": {k.split('"')[1]: int(v - first.get(k, 0.0)) for k, v in last.items()
                     if k.startswith("clausewatch_captures_total{")},
        "cpu_s": round(cpu, 1),
        "scheduler_lag_mean_s": round(lag_sum / lag_count, 3) if lag_count else None,
        "scheduler_lag_p99_le_s": daemon_proc.histogram_quantile(
            last, "clausewatch_scheduler_lag_seconds", 0.99, first),
        "queue_depth_end": last.get("clausewatch_queue_depth"),
        "rss_mb_after_warmup": round(after_warmup[0], 1),
        "rss_mb_peak": round(rss.peak, 1),
        "rss_mb_end": round(series[-1][1], 1),
        "rss_mb_per_min_second_half": round(_slope(half) * 60, 2),
        "drain_s": round(drain, 1),
        "scrapes": scrapes,
    })
    log(f"steady: {result['polls_per_s']} polls/s, lag mean {result['scheduler_lag_mean_s']} s, "
        f"RSS {result['rss_mb_after_warmup']} -> {result['rss_mb_end']} MB "
        f"(peak {result['rss_mb_peak']})")
    return result


def _scrape(at: float, samples: dict[str, float], rss: procstats.RssSampler) -> dict[str, Any]:
    return {"t": round(at, 1),
            "captures": daemon_proc.metric_sum(samples, "clausewatch_captures_total"),
            "queue_depth": samples.get("clausewatch_queue_depth"),
            "lag_count": samples.get("clausewatch_scheduler_lag_seconds_count"),
            "lag_sum": samples.get("clausewatch_scheduler_lag_seconds_sum"),
            "rss_mb": round(rss.samples[-1][1], 1) if rss.samples else None}


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope (units per second)."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / var if var else 0.0
