"""A stand-in daemon process for the crash tests: captures, then consumes and delivers forever.

    python -m helpers.notify_proc SPEC.json [--init] [--capture N] [--crash-after-capture]

SPEC.json names the store, the receiver URL and how many subscriptions there are (one webhook
channel each, at RECEIVER/hook/sN). `--init` records the baselines and the consumer's start
position, then exits; `--capture N` records N changed captures before delivering;
`--crash-after-capture` kills the process with SIGKILL right after those captures are saved,
before the outbox has seen them. Otherwise the process runs until it is killed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from config.settings import StoreSettings, SubscriptionSettings
from daemon.metrics import Metrics
from daemon.notifications import Notifications
from helpers.notify_kit import DOCUMENTS, ENVIRON, Capturer, opened, settings, webhook
from notifiers.retry import RetryPolicy


def _settings(spec: dict[str, Any]) -> Any:
    store = StoreSettings(url=spec["store_url"], schema=spec.get("schema"))
    count = int(spec["subscriptions"])
    channels = [webhook(f"hook-s{i}", f"{spec['receiver']}/hook/s{i}", timeout=1.0)
                for i in range(count)]
    subs = [SubscriptionSettings(id=f"s{i}", channels=(f"hook-s{i}",)) for i in range(count)]
    return settings(Path(spec["data_dir"]), store, channels=channels, subscriptions=subs)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("spec", type=Path)
    parser.add_argument("--init", action="store_true")
    parser.add_argument("--capture", type=int, default=0)
    parser.add_argument("--crash-after-capture", action="store_true")
    args = parser.parse_args(argv)
    spec = json.loads(args.spec.read_text())
    cfg = _settings(spec)
    policy = RetryPolicy(base=0.05, max_delay=0.2, give_up_after=timedelta(hours=1),
                         jitter=random.Random())
    with opened(cfg.store, cfg.data_dir) as store:
        capturer = Capturer(store)
        if args.init:
            capturer.baseline(at=datetime.now(UTC))
        notifications = Notifications(store, cfg, Metrics(), ENVIRON, policy=policy,
                                      lease=spec.get("lease", 2.0), owner=f"proc-{os.getpid()}")
        if args.init:
            print("initialised", flush=True)
            return 0
        if args.capture:
            # The captures continue the text where the last process left it: reload it.
            _restore_texts(capturer)
            for n in range(args.capture):
                doc = DOCUMENTS[n % len(DOCUMENTS)].id
                capturer.change(doc, datetime.now(UTC), text=f"Clause {os.getpid()}-{n}.",
                                kind="added")
            print(f"captured {args.capture}", flush=True)
            if args.crash_after_capture:
                os.kill(os.getpid(), signal.SIGKILL)
        asyncio.run(_serve(notifications))
    return 0


def _restore_texts(capturer: Capturer) -> None:
    for doc in DOCUMENTS:
        clauses = capturer.service.clauses(doc.id, include_removed=False)
        capturer.texts[doc.id] = [c["text"] for c in clauses]


async def _serve(notifications: Notifications) -> None:
    async with notifications:
        print("delivering", flush=True)
        await notifications.run(asyncio.Event())  # until SIGKILL


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
