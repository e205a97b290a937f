"""The event store's transcoder: eventsourcing's JSON, written and read by orjson.

The stored bytes are the library's JSON (`{"_type_": name, "_data_": ...}` for what a
transcoding encodes, tuples as arrays, UTF-8 text), so events written by either transcoder
read back alike with the other. orjson encodes a 300 kB clause list in ~0.5 ms instead of
~3.7 ms (a changed page's poll writes one); reading gains less on real states (1.3 against
1.6 ms for a 100 kB capture with its clause list: making the objects dominates).

Where orjson would not give the library's result, the library's code does the work:
- orjson writes a UUID itself (as its text) where the library calls the `uuid_hex`
  transcoding. Our events hold none (the document's id is the stored event's originator
  id, not state), but any text shaped like a UUID sends the event the library's way;
- it writes NaN and infinities as null (the library: NaN, Infinity). None of our values can
  be either (similarities, strengths and confidences are ratios of counts and weights), so
  this is not checked: finding a float in a clause list would cost most of the gain. The
  library's NaN, if some store holds one, is read by the library's decoder (orjson refuses it);
- it refuses integers beyond 64 bits, and types no transcoding knows: the library then
  encodes them or raises its own error.
A transcoding registered for a type orjson writes natively (an Enum, say) turns the fast
path off for encoding altogether.
"""

from __future__ import annotations

import dataclasses
import re
from collections import deque
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.persistence import JSONTranscoder, Transcoding

# Types a transcoding may be registered for with the fast path still exact: with the options
# below orjson hands datetimes, dates, times, Decimals and dataclasses to `default` (so to
# the transcoding, as the library does); UUIDs it writes itself, which the text check catches.
_HANDED_OVER = (datetime, date, time, Decimal, UUID)
_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
# A UUID as orjson writes it ends like this; the leading hyphen lets the scan skip to hyphens.
_UUID_TAIL = re.compile(rb'-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"')
_MARK = b'"_type_"'


class FastJSONTranscoder(JSONTranscoder):
    """JSONTranscoder's format, with orjson doing the work where the result is the same."""

    def __init__(self) -> None:
        super().__init__()
        self._fast_encode = True

    def register(self, transcoding: Transcoding) -> None:
        super().register(transcoding)
        kind = transcoding.type
        if not (issubclass(kind, _HANDED_OVER) or dataclasses.is_dataclass(kind)):
            self._fast_encode = False

    def encode(self, obj: Any) -> bytes:
        if self._fast_encode:
            try:
                data = orjson.dumps(obj, default=self._encode_obj, option=_OPTIONS)
            except TypeError:  # orjson.JSONEncodeError: the library says what is wrong
                pass
            else:
                if _UUID_TAIL.search(data) is None:
                    return data
        return super().encode(obj)

    def decode(self, data: bytes) -> Any:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:  # NaN, huge integers, bad UTF-8: the library's way
            return super().decode(data)
        marks = data.count(_MARK)
        if not marks:
            return obj
        if type(obj) is not dict or "_type_" in obj or not self._decode_marked(obj, marks):
            return super().decode(data)
        return obj

    def _decode_marked(self, obj: Any, marks: int) -> bool:
        """Replace every transcoded object in `obj` by its value, breadth first (a snapshot's
        times sit above its clause list); False if the library should decode it instead."""
        names = self.names
        pending: deque[Any] = deque([obj])
        while pending and marks:
            container = pending.popleft()
            items = container.items() if type(container) is dict else enumerate(container)
            for key, value in items:
                kind = type(value)
                if kind is dict:
                    if len(value) == 2 and "_type_" in value and "_data_" in value:
                        name, inner = value["_type_"], value["_data_"]
                        if type(name) is not str or name not in names \
                                or type(inner) in (dict, list):
                            return False  # nested, or unknown: the library's errors and order
                        container[key] = names[name].decode(inner)
                        marks -= 1
                    elif value:
                        pending.append(value)
                elif kind is list and value:
                    pending.append(value)
        # A count left over is text that merely reads "_type_" (a key or a whole string).
        return True
