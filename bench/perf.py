"""clausewatch's performance benchmark: one command, a table on stdout, the same as JSON.

    .venv/bin/python bench/perf.py                 # everything (competitors installed on first use)
    .venv/bin/python bench/perf.py --no-competitors --docs 50 --steady-seconds 20 \\
        --latency-changes 10 --rebuild-events 20000   # a quick look

Sections (each can be skipped with --skip NAME):
  pass     full polling passes over N documents (real corpus pages served on 127.0.0.1):
           baseline, unchanged (304), markup-only (200, same text) and changed (a share of
           real text changes); clausewatch, urlwatch and changedetection.io alternated,
           reported as ratios, with the alerts each raised on the markup-only pass;
  steady   the daemon over many documents with short intervals for a few minutes: polls/s,
           scheduler lag, RSS over time;
  latency  a text change served -> ClauseChanged stored -> webhook received, p50 / p99;
  rebuild  projections rebuilt from a large event log, SQLite and PostgreSQL.

Benchmarks print numbers and write JSON; they never assert. Contains data from Open Terms
Archive (opentermsarchive.org), ODC-By 1.0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import contenders
import pages
import procstats

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
PHASES = (
    # name, server phase, what the pass stands for
    ("baseline", "base", "first capture of every document"),
    ("unchanged", "base", "nothing changed: conditional GET answered 304"),
    ("markup", "noise", "only markup changed: 200, different bytes, same text"),
    ("changed", "changed", "a share of documents with a real text change, the rest unchanged"),
)
SECTIONS = ("pass", "steady", "latency", "rebuild")


def log(message: str) -> None:
    """Progress on stderr, so stdout stays the table."""
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# The page server -----------------------------------------------------------------------------


@dataclass
class PageServer:
    """bench/page_server.py in a process of its own."""

    docs: int
    corpus: Path
    process: subprocess.Popen[str] | None = None
    port: int = 0  # 0: any free port; a fixed one keeps the documents' URLs across servers

    def __enter__(self) -> PageServer:
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / "bench" / "page_server.py"), "--docs", str(self.docs),
             "--corpus", str(self.corpus), "--port", str(self.port)],
            stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"the page server did not start: {line!r}")
        self.port = int(line.split()[1])
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # its own session: never left behind
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(self, method: str, path: str) -> Any:
        request = urllib.request.Request(f"{self.url}{path}", method=method, data=b"" if
                                         method == "POST" else None)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def phase(self, name: str, *, share: float = 0.0, markup: float = 0.0) -> None:
        self.call("POST", f"/_phase?name={name}&share={share}&markup={markup}")


# Passes --------------------------------------------------------------------------------------


def run_passes(args: argparse.Namespace, docs: int, workdir: Path, report: dict[str, Any],
               server: PageServer) -> contenders.ClauseWatchTool:
    """Every phase for every tool, the tools alternated within each phase."""
    triples = pages.load_triples(args.corpus)
    changed = [d for d in range(docs) if pages.is_changed(d, args.share)]
    section: dict[str, Any] = {"docs": docs, "share": args.share, "changed_docs": len(changed),
                               "triples": [f"{t.document}@{t.seqs}" for t in triples],
                               "passes": [], "unavailable": {}}
    report.setdefault("passes", []).append(section)
    ours = contenders.ClauseWatchTool(workdir / f"clausewatch-{docs}",
                                      extract_processes=args.extract_processes)
    server.call("POST", "/_stats/reset")
    tools: list[Any] = [ours]
    if args.competitors and docs <= args.competitors_max_docs:
        tools.append(contenders.UrlwatchTool(workdir / f"urlwatch-{docs}", log=log))
        tools.append(contenders.ChangeDetectionTool(workdir / f"changedetection-{docs}",
                                                    log=log))
    server.phase("base")
    ready = []
    for tool in tools:
        log(f"N={docs}: setting up {tool.name}")
        try:
            tool.setup(server.url, docs, triples)
        except contenders.ToolUnavailableError as exc:
            log(f"{tool.name} unavailable: {exc}")
            section["unavailable"][tool.name] = str(exc)
            continue
        ready.append(tool)
    try:
        for number, (name, server_phase, _) in enumerate(PHASES):
            server.phase(server_phase, share=args.share)
            # Alternate who goes first, so no tool always meets a cold or warm machine.
            order = ready[number % len(ready):] + ready[:number % len(ready)]
            for tool in order:
                if name == "baseline" and tool.name == "changedetection.io":
                    continue  # its baseline ran when the watches were created (setup)
                waited, busy = procstats.wait_quiet()
                log(f"N={docs}: {tool.name} {name} pass (machine {busy:.0%} busy after "
                    f"{waited:.1f} s of waiting for it to settle)")
                result = tool.run_pass(name)
                section["passes"].append(result.row() | {
                    "alerted_docs": list(result.alerts)})
                log(f"  {result.wall:.1f} s wall, {result.cpu:.1f} s CPU, "
                    f"{result.peak_rss_mb:.0f} MB, {len(result.alerts)} alerts")
    finally:
        for tool in ready:
            tool.close()
    section["server"] = server.call("GET", "/_stats")
    _score_passes(section, set(changed))
    return ours


def _score_passes(section: dict[str, Any], changed: set[int]) -> None:
    """False alerts on the markup pass, missed and extra alerts on the changed pass."""
    for row in section["passes"]:
        alerted = set(row.get("alerted_docs", []))
        if row["phase"] in ("unchanged", "markup"):
            row["false_alerts"] = row["alerts"]
        elif row["phase"] == "changed":
            row["missed"] = len(changed) - row["alerts"] if row["alerts"] <= len(changed) \
                else 0
            row["false_alerts"] = len(alerted - changed)
    by = {(r["tool"], r["phase"]): r for r in section["passes"]}
    ratios = []
    for (tool, phase), row in by.items():
        if tool == "clausewatch":
            continue
        ours = by.get(("clausewatch", phase))
        if ours and ours["wall_s"]:
            ratios.append({"tool": tool, "phase": phase,
                           "wall_ratio": round(row["wall_s"] / ours["wall_s"], 2),
                           "cpu_ratio": round(row["cpu_s"] / ours["cpu_s"], 2)
                           if ours["cpu_s"] else None})
    section["ratios"] = ratios


# Output ----------------------------------------------------------------------------------


def pass_table(section: dict[str, Any]) -> str:
    lines = [f"Full polling passes, N = {section['docs']:,} documents "
             f"({section['changed_docs']} with a real text change in the 'changed' pass)",
             f"{'tool':20} {'phase':10} {'wall s':>8} {'docs/s':>8} {'CPU s':>8} "
             f"{'peak MB':>8} {'alerts':>7} {'errors':>6} {'x ours':>7}"]
    ratios = {(r["tool"], r["phase"]): r["wall_ratio"] for r in section.get("ratios", [])}
    for row in section["passes"]:
        ratio = ratios.get((row["tool"], row["phase"]))
        lines.append(f"{row['tool']:20} {row['phase']:10} {row['wall_s']:8.2f} "
                     f"{row['docs_per_s']:8.1f} {row['cpu_s']:8.2f} {row['peak_rss_mb']:8.0f} "
                     f"{row['alerts']:7d} {row['errors']:6d} "
                     f"{'' if ratio is None else f'{ratio:6.2f}x':>7}")
    for tool, why in section.get("unavailable", {}).items():
        lines.append(f"{tool}: not run: {why.splitlines()[0]}")
    return "\n".join(lines)


def steady_table(r: dict[str, Any]) -> str:
    return "\n".join([
        f"Steady state: {r['docs']:,} documents, interval {r['interval_s']:.0f} s, "
        f"{r['seconds']:.0f} s run",
        f"  polls/s {r['polls_per_s']} (offered {r['offered_polls_per_s']}), outcomes "
        f"{r['outcomes']}, daemon CPU {r['cpu_s']} s",
        f"  scheduler lag mean {r['scheduler_lag_mean_s']} s, p99 <= "
        f"{r['scheduler_lag_p99_le_s']} s (histogram bucket), queue at end "
        f"{r['queue_depth_end']}",
        f"  RSS after {steady_warmup():.0f} s {r['rss_mb_after_warmup']} MB, peak "
        f"{r['rss_mb_peak']} MB, end {r['rss_mb_end']} MB, second-half slope "
        f"{r['rss_mb_per_min_second_half']} MB/min"])


def steady_warmup() -> float:
    import steady

    return steady.WARMUP_SECONDS


def latency_table(r: dict[str, Any]) -> str:
    lines = [f"Alert latency: {r['changes']} text changes over {r['docs']} documents "
             f"(measured from the changed page being served)"]
    for key, label in (("served_to_stored", "served -> ClauseChanged stored"),
                       ("served_to_webhook", "served -> webhook received")):
        q = r[key]
        lines.append(f"  {label:32} n={q['n']:4d}  p50 {q['p50_s']} s  p90 {q.get('p90_s')} s  "
                     f"p99 {q['p99_s']} s  max {q['max_s']} s")
    if r.get("note"):
        lines.append(f"  note: {r['note']}")
    return "\n".join(lines)


def rebuild_table(r: dict[str, Any]) -> str:
    lines = ["Projection rebuild (`clausewatch rebuild`)"]
    for backend in ("sqlite", "postgres"):
        b = r.get(backend)
        if b is None:
            continue
        if "skipped" in b:
            lines.append(f"  {backend:9} skipped: {b['skipped']}")
            continue
        lines.append(f"  {backend:9} {b['events']:>9,} events  {b['wall_s']:8.1f} s  "
                     f"{b['events_per_s']:>7,} events/s  CPU {b['cpu_s']} s  "
                     f"peak {b['peak_rss_mb']} MB")
        if len(b.get("runs", ())) > 1:
            lines.append("  " + " " * 9 + " runs (median above): " + ", ".join(
                f"{run['wall_s']} s" for run in b["runs"]))
    return "\n".join(lines)


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets against this run's numbers (None where a section did not run)."""
    rows: list[dict[str, Any]] = []

    def add(target: str, measured: Any, met: bool | None) -> None:
        rows.append({"target": target, "measured": measured, "met": met})

    for section in report.get("passes", []):
        by = {(r["tool"], r["phase"]): r for r in section["passes"]}
        docs = section["docs"]
        for phase in ("changed", "markup", "unchanged"):
            ours = by.get(("clausewatch", phase))
            for tool, factor in (("urlwatch", 3), ("changedetection.io", 10)):
                theirs = by.get((tool, phase))
                if ours and theirs and ours["wall_s"]:
                    ratio = theirs["wall_s"] / ours["wall_s"]
                    add(f"N={docs} {phase} pass: >= {factor}x faster than {tool}",
                        f"{ratio:.2f}x ({ours['wall_s']:.1f} s vs {theirs['wall_s']:.1f} s)",
                        ratio >= factor)
        markup = {t: r["alerts"] for (t, p), r in by.items() if p == "markup"}
        if markup:
            ours_alerts = markup.get("clausewatch")
            add(f"N={docs} noise-only pages: zero alerts from clausewatch",
                ", ".join(f"{t} {n}" for t, n in markup.items()), ours_alerts == 0)
            others = [n for t, n in markup.items() if t != "clausewatch"]
            if others and ours_alerts is not None:
                add(f"N={docs} noise-only pages: fewer alerts than each competitor",
                    ", ".join(f"{t} {n}" for t, n in markup.items()),
                    all(ours_alerts < n for n in others))
        if docs >= 10_000:
            peak = max(r["peak_rss_mb"] for (t, _), r in by.items() if t == "clausewatch")
            add(f"N={docs} check passes under 250 MB RSS (all their processes)",
                f"{peak:.0f} MB", peak < 250)
    steady = report.get("steady")
    if steady:
        add(f"{steady['docs']:,} documents in one daemon under 250 MB RSS",
            f"peak {steady['rss_mb_peak']} MB", steady["rss_mb_peak"] < 250)
        add("RSS flat over the steady run",
            f"{steady['rss_mb_after_warmup']} -> {steady['rss_mb_end']} MB, "
            f"{steady['rss_mb_per_min_second_half']} MB/min in the second half", None)
    latency = report.get("latency")
    if latency:
        p99 = latency["served_to_webhook"]["p99_s"]
        add("change -> webhook received p99 < 1 s (poll interval excluded)",
            f"p99 {p99} s, p50 {latency['served_to_webhook']['p50_s']} s "
            f"(n={latency['served_to_webhook']['n']})",
            None if p99 is None else p99 < 1.0)
    rebuild = report.get("rebuild", {}).get("sqlite")
    if rebuild and "events_per_s" in rebuild:
        add("projection rebuild >= 50,000 events/s on SQLite",
            f"{rebuild['events_per_s']:,} events/s over {rebuild['events']:,} events",
            rebuild["events_per_s"] >= 50_000)
    return rows


def targets_table(rows: list[dict[str, Any]]) -> str:
    lines = ["Targets"]
    for row in rows:
        verdict = {True: "met", False: "SHORT", None: "see numbers"}[row["met"]]
        lines.append(f"  [{verdict:^11}] {row['target']}: {row['measured']}")
    return "\n".join(lines)


def print_report(report: dict[str, Any]) -> None:
    for section in report.get("passes", []):
        print(pass_table(section))
        print()
    for name, table in (("steady", steady_table), ("latency", latency_table),
                        ("rebuild", rebuild_table)):
        if name in report:
            print(table(report[name]))
            print()
    rows = targets(report)
    if rows:
        print(targets_table(rows))
        print()


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "started": datetime.now(UTC).isoformat(timespec="seconds")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, action="append",
                        help="documents per pass (repeatable; default 1000 and 10000)")
    parser.add_argument("--share", type=float, default=0.1,
                        help="share of documents with a real text change (default 0.1)")
    parser.add_argument("--no-competitors", dest="competitors", action="store_false",
                        help="run clausewatch only (no urlwatch, no changedetection.io)")
    parser.add_argument("--competitors-max-docs", type=int, default=1000,
                        help="run the competitors only for N up to this (default 1000)")
    parser.add_argument("--skip", action="append", default=[], choices=SECTIONS)
    parser.add_argument("--corpus", type=Path, default=pages.CORPUS)
    parser.add_argument("--extract-processes", type=int, default=0,
                        help="clausewatch's [detection] extract_processes (default 0: in its "
                        "polling threads)")
    parser.add_argument("--steady-docs", type=int, default=10_000)
    parser.add_argument("--steady-seconds", type=float, default=180.0)
    parser.add_argument("--steady-interval", type=float, default=120.0,
                        help="each document's poll interval in the steady run (seconds)")
    parser.add_argument("--steady-workers", type=int, default=4)
    parser.add_argument("--latency-docs", type=int, default=200)
    parser.add_argument("--latency-changes", type=int, default=100)
    parser.add_argument("--latency-interval", type=float, default=10.0)
    parser.add_argument("--latency-spacing", type=float, default=0.5,
                        help="seconds between two text changes in the latency run")
    parser.add_argument("--rebuild-events", type=int, default=1_000_000)
    parser.add_argument("--rebuild-documents", type=int, default=1_000)
    parser.add_argument("--rebuild-repeat", type=int, default=1,
                        help="rebuild each log this many times; the median run is reported")
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test",
                        help="PostgreSQL for the rebuild section ('' to leave it out)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where stores and datastores go (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=None, help="the JSON file to write")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the servers this run started are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.docs = args.docs or [1000, 10_000]
    if not args.corpus.is_dir():
        # A checkout elsewhere than beside shared/ (a clone in /tmp, say): the figures are
        # then of the trimmed copy's fewer triples, not comparable with the reports.
        log(f"no corpus at {args.corpus}: using the trimmed copy {pages.TRIMMED_CORPUS} "
            "(fewer noise triples than the reports'); name the full one with --corpus DIR")
        args.corpus = pages.TRIMMED_CORPUS
    out = args.out or RESULTS / f"perf-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    report: dict[str, Any] = {"machine": machine(), "args": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    sizes = [*(args.docs if "pass" not in args.skip else []),
             *([args.steady_docs] if "steady" not in args.skip else []),
             *([args.latency_docs] if "latency" not in args.skip else [])]
    with _workdir(args.workdir) as workdir, PageServer(max(sizes or [1]), args.corpus) as server:
        ours: dict[int, contenders.ClauseWatchTool] = {}
        if "pass" not in args.skip:
            for docs in args.docs:
                ours[docs] = run_passes(args, docs, workdir, report, server)
                _write(out, report)
        if "steady" not in args.skip:
            import steady

            reuse = ours.get(args.steady_docs)
            earlier = workdir / f"clausewatch-{args.steady_docs}"
            if reuse is None and (earlier / "data" / "events.db").exists():
                # A store an earlier run left in --workdir: settling it beats a new baseline.
                reuse = contenders.ClauseWatchTool(earlier, fresh=False,
                                                   extract_processes=args.extract_processes)
                reuse.setup(server.url, args.steady_docs, pages.load_triples(args.corpus))
            report["steady"] = steady.run(args, workdir / "steady", log=log, server=server,
                                          reuse=reuse)
            _write(out, report)
        if "latency" not in args.skip:
            import latency

            report["latency"] = latency.run(args, workdir / "latency", log=log, server=server)
            _write(out, report)
        if "rebuild" not in args.skip:
            import rebuild

            report["rebuild"] = rebuild.run(args, workdir / "rebuild", log=log)
            _write(out, report)
    report["targets"] = targets(report)
    _write(out, report)
    print_report(report)
    print(f"written to {out}")
    return 0


@contextlib.contextmanager
def _workdir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    folder = Path(tempfile.mkdtemp(prefix="clausewatch-bench-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _write(out: Path, report: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
