"""The benchmark's page server: N real policy pages on 127.0.0.1, in a process of its own.

    python bench/page_server.py --docs 1000 [--corpus DIR] [--port 0]

Prints `PORT <n>` once listening. Document i is served at /d/i (see pages.py). What each
document serves depends on the phase, set with POST /_phase?name=…&share=…:

- base:    every document serves its base snapshot;
- noise:   every document serves the next snapshot: different markup, same text;
- changed: `share` of the documents serve the snapshot whose text changed, the rest the noise;
- steady:  per request, a rotation: `share` of the documents cycle noise, change, change,
           noise (a real text change every other poll), `markup` of them alternate base and
           noise (new bytes, same text, every poll), the rest keep serving the noise snapshot
           (304 to a conditional GET): a store settled in the noise phase starts steady.

POST /_flip?doc=i serves document i's changed text from now on, whatever the phase, and
records when that text is first sent (GET /_served). Every answer carries an ETag, and a
matching If-None-Match is answered 304. GET /_stats counts answers by status.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pages

_STEADY_TEXT = (1, 2, 2, 1)


class Pages:
    """The state behind the server: phase, flipped documents, counters."""

    def __init__(self, docs: int, triples: list[pages.Triple]) -> None:
        self.docs = docs
        self.triples = triples
        self.phase = "base"
        self.share = 0.0
        self.markup = 0.0
        self.flipped: set[int] = set()
        self.served_at: dict[int, float] = {}
        self.requests: Counter[int] = Counter()
        self.statuses: Counter[int] = Counter()
        self.bytes_sent = 0

    def version(self, doc: int) -> int:
        if doc in self.flipped:
            return 2
        if self.phase == "noise":
            return 1
        if self.phase == "changed":
            return 2 if pages.is_changed(doc, self.share) else 1
        if self.phase == "steady":
            n = self.requests[doc]
            if pages.is_changed(doc, self.share):
                return _STEADY_TEXT[n % len(_STEADY_TEXT)]
            if pages.is_changed(doc + 10_000_000, self.markup):
                return n % 2
            return 1
        return 0

    async def page(self, request: web.Request) -> web.Response:
        try:
            doc = int(request.match_info["doc"])
        except ValueError:
            raise web.HTTPNotFound() from None
        if not 0 <= doc < self.docs:
            raise web.HTTPNotFound()
        version = self.version(doc)
        self.requests[doc] += 1
        index = doc % len(self.triples)
        etag = f'"{index}.{self.triples[index].seqs[version]}.{doc}"'
        if request.headers.get("If-None-Match") == etag:
            self.statuses[304] += 1
            return web.Response(status=304, headers={"ETag": etag})
        body = self.triples[index].body(version, doc)
        self.statuses[200] += 1
        self.bytes_sent += len(body)
        if version == 2 and doc in self.flipped and doc not in self.served_at:
            self.served_at[doc] = time.time()
        return web.Response(body=body, headers={"ETag": etag,
                                                "Content-Type": "text/html; charset=utf-8"})

    async def set_phase(self, request: web.Request) -> web.Response:
        self.phase = request.query.get("name", "base")
        self.share = float(request.query.get("share", "0"))
        self.markup = float(request.query.get("markup", "0"))
        self.flipped.clear()
        self.served_at.clear()
        return web.json_response({"phase": self.phase, "share": self.share})

    async def flip(self, request: web.Request) -> web.Response:
        self.flipped.add(int(request.query["doc"]))
        return web.json_response({"flipped": len(self.flipped)})

    async def served(self, request: web.Request) -> web.Response:
        return web.json_response({str(k): v for k, v in self.served_at.items()})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({"statuses": {str(k): v for k, v in self.statuses.items()},
                                  "requests": sum(self.requests.values()),
                                  "bytes_sent": self.bytes_sent})

    async def reset_stats(self, request: web.Request) -> web.Response:
        self.statuses.clear()
        self.bytes_sent = 0
        return web.json_response({})


async def serve(docs: int, corpus: Path, port: int) -> None:
    state = Pages(docs, pages.load_triples(corpus))
    app = web.Application()
    app.router.add_get("/d/{doc}", state.page)
    app.router.add_post("/_phase", state.set_phase)
    app.router.add_post("/_flip", state.flip)
    app.router.add_get("/_served", state.served)
    app.router.add_get("/_stats", state.stats)
    app.router.add_post("/_stats/reset", state.reset_stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
    await site.start()
    print(f"PORT {runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, required=True)
    parser.add_argument("--corpus", type=Path, default=pages.CORPUS)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.docs, args.corpus, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
