"""A/B: one polling pass of `clausewatch check`, by two or more checkouts, on the same store.

    .venv/bin/python bench/ab.py --checkout before=/tmp/before --checkout after=. \\
        --phase markup --docs 1000 --trials 5 [--corpus DIR] [--extract-processes 2]

perf.py measures a whole run against the competitors; this measures one pass of ours, the
same pass many times, so a change of a few per cent shows through the machine's noise. It
settles one store through the passes before `--phase` (baseline, unchanged, markup, as
perf.py runs them), then for each trial copies that store afresh and runs each checkout's
`check` on it, the checkouts alternated (who goes first changes every trial). A checkout
is any folder holding this repository's packages (`git worktree add /tmp/before HEAD~1`):
its code is put first on the import path of the project's own virtualenv, so the
dependencies are the same for every checkout.

The page server keeps one port for the whole run: a store settled on another port would
see every document's URL changed and redescribe all of them in the measured pass.
Prints wall and CPU seconds per trial and their medians; asserts nothing. Contains data
from Open Terms Archive (opentermsarchive.org), ODC-By 1.0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import contenders
import pages
import procstats
from perf import PHASES, PageServer, log

REPO = Path(__file__).resolve().parents[1]
# The passes perf.py runs, in its order, and the page server's phase for each.
PASSES = tuple((name, server_phase) for name, server_phase, _ in PHASES)
# `check` as installed, but with one checkout's packages first on the path.
_RUN = ("import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); "
        "sys.argv[0] = 'clausewatch'; runpy.run_module('daemon.cli', run_name='__main__')")


def check(python: Path, checkout: Path, config: Path) -> procstats.Finished:
    """One `clausewatch check` of `config` with `checkout`'s code; raises if it failed."""
    done = procstats.run_measured([str(python), "-c", _RUN, str(checkout), "check", "-c",
                                   str(config), "--json"], cwd=checkout)
    if done.returncode not in (0, 1):  # 1: a page failed or changed, still a whole pass
        raise RuntimeError(f"check by {checkout} exited {done.returncode}:\n"
                           f"{done.stderr[-2000:]}")
    return done


def outcomes(done: procstats.Finished) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in json.loads(done.stdout):
        counts[row["outcome"]] = counts.get(row["outcome"], 0) + 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", action="append", required=True, metavar="NAME=DIR",
                        help="a checkout to measure (repeatable)")
    parser.add_argument("--phase", choices=[name for name, _ in PASSES], default="changed")
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--share", type=float, default=0.1)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--extract-processes", type=int, default=2)
    parser.add_argument("--corpus", type=Path, default=pages.CORPUS)
    parser.add_argument("--port", type=int, default=18765)
    parser.add_argument("--python", type=Path, default=REPO / ".venv" / "bin" / "python")
    args = parser.parse_args(argv)
    checkouts = {}
    for item in args.checkout:
        name, _, folder = item.partition("=")
        if not folder or not (Path(folder) / "daemon" / "cli.py").is_file():
            parser.error(f"--checkout {item!r}: NAME=DIR, DIR a checkout of this repository")
        checkouts[name] = Path(folder).resolve()
    if not args.corpus.is_dir():
        log(f"no corpus at {args.corpus}: using the trimmed copy {pages.TRIMMED_CORPUS}")
        args.corpus = pages.TRIMMED_CORPUS
    for folder in checkouts.values():  # as an installation compiles them
        contenders.compile_bytecode(args.python, folder)
    triples = pages.load_triples(args.corpus)
    work = Path(tempfile.mkdtemp(prefix="clausewatch-ab-"))
    try:
        seed, run = work / "seed", work / "run"
        config = work / "clausewatch.toml"
        with PageServer(args.docs, args.corpus, port=args.port) as server:
            config.write_text(contenders.write_config(
                run, server.url, args.docs, triples, extract_processes=args.extract_processes))
            first = next(iter(checkouts.values()))
            # Settle: the passes before the measured one, by the first checkout.
            for name, phase in PASSES[:[n for n, _ in PASSES].index(args.phase)]:
                server.phase(phase, share=args.share)
                log(f"settling: {name} pass")
                check(args.python, first, config)
            if (run / "data").exists():
                shutil.copytree(run / "data", seed / "data")
            server.phase(dict(PASSES)[args.phase], share=args.share)
            rows: dict[str, list[procstats.Finished]] = {name: [] for name in checkouts}
            for trial in range(args.trials):
                order = list(checkouts.items())
                order = order[trial % len(order):] + order[:trial % len(order)]
                for name, folder in order:
                    shutil.rmtree(run, ignore_errors=True)
                    if (seed / "data").exists():
                        shutil.copytree(seed / "data", run / "data")
                    os.sync()  # the copy's writeback is not this trial's cost
                    done = check(args.python, folder, config)
                    rows[name].append(done)
                    log(f"trial {trial + 1} {name}: {done.wall:.2f} s wall, {done.cpu:.2f} s "
                        f"CPU, {done.peak_rss_mb:.0f} MB, {outcomes(done)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.phase} pass, N = {args.docs}, {args.trials} trials, extract_processes "
          f"{args.extract_processes}")
    print(f"{'checkout':12} {'median wall s':>14} {'median CPU s':>13}  walls")
    for name, done in rows.items():
        print(f"{name:12} {statistics.median(d.wall for d in done):14.2f} "
              f"{statistics.median(d.cpu for d in done):13.2f}  "
              + " ".join(f"{d.wall:.2f}" for d in done))
    return 0


if __name__ == "__main__":
    sys.exit(main())
