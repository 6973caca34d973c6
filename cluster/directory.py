"""The directory: places each new stream on the host with most room, and records stream -> (host,
generation), the one place the front door looks a stream up.

It keeps what each host has reserved, from the streams it placed (and the closes and idle closes hosts
report), so placing costs no call to every host. A host that starts again (a new generation) drops its
streams here at once: they are remembered as lost, and answer 410. The directory holds nothing that is
not also on the hosts: when it starts again it asks each host what it holds and carries on; streams stay
where they are. A Ray async actor, so opens that wait on a host's session set-up overlap."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

import ray

from potwatch.cluster import replies
from potwatch.cluster.config import NAMESPACE, host_name
from potwatch.compression.mem_cap import format_bytes

log = logging.getLogger(__name__)
LOST_KEPT = 10_000  # lost stream ids remembered, to answer 410 rather than 404
ASK_HOST_S = 10.0  # how long a rebuild waits for one host


@dataclass
class HostRecord:
    generation: str | None = None
    budget: int = 0
    ready: bool = False
    reserved: dict[str, int] = field(default_factory=dict)  # stream -> bytes, placed or being placed

    def room(self) -> int:
        return self.budget - sum(self.reserved.values())


class Directory:
    """Where every stream lives. Made a Ray actor (async) by cluster/start.py."""

    def __init__(self, host_count: int, retry_after_s: int = 10) -> None:
        self.host_count = host_count
        self.retry_after_s = retry_after_s
        self.hosts = {index: HostRecord() for index in range(host_count)}
        self.streams: dict[str, tuple[int, str]] = {}
        self.lost: OrderedDict[str, str] = OrderedDict()
        self._rebuilt = False

    # --- what hosts tell it ------------------------------------------------------------------------
    def host_started(self, index: int, generation: str) -> None:
        """Host `index` (re)started empty as `generation`: its older streams are lost."""
        record = self.hosts.setdefault(index, HostRecord())
        if record.generation == generation:
            return
        for stream_id in [s for s, (i, g) in self.streams.items() if i == index and g != generation]:
            del self.streams[stream_id]
            self._remember_lost(stream_id, f"its host {index} stopped and started again empty")
        self.hosts[index] = HostRecord(generation=generation)

    def host_ready(self, index: int, generation: str, budget: int) -> None:
        self.host_started(index, generation)
        record = self.hosts[index]
        record.budget, record.ready = budget, True

    def forget(self, stream_ids: list[str], why: str | None) -> None:
        """Streams closed by their host (`why`, for an idle close) or by their user (None)."""
        for stream_id in stream_ids:
            where = self.streams.pop(stream_id, None)
            if where is not None:
                self.hosts[where[0]].reserved.pop(stream_id, None)
            if why is not None:
                self._remember_lost(stream_id, why)

    def _remember_lost(self, stream_id: str, why: str) -> None:
        self.lost[stream_id] = why
        while len(self.lost) > LOST_KEPT:
            self.lost.popitem(last=False)

    async def _rebuild(self) -> None:
        """Learn every host's generation, budget and streams from the hosts themselves (at the first request
        after the directory starts, or starts again)."""
        if self._rebuilt:
            return
        self._rebuilt = True

        async def ask(index: int):
            try:
                return await asyncio.wait_for(ray.get_actor(host_name(index), namespace=NAMESPACE).holding.remote(),
                                              ASK_HOST_S)
            except Exception:  # noqa: BLE001 - a host not up yet tells the directory itself when it is
                return None

        for held in await asyncio.gather(*(ask(index) for index in range(self.host_count))):
            if not held:
                continue
            index, generation = held["index"], held["generation"]
            self.host_started(index, generation)
            if held["ready"]:
                self.host_ready(index, generation, held["budget"])
            for stream_id, nbytes in held["streams"].items():
                self.streams[stream_id] = (index, generation)
                self.hosts[index].reserved[stream_id] = nbytes

    # --- what the front door asks --------------------------------------------------------------------
    async def lookup(self, stream_id: str) -> dict:
        """{"host", "generation"} of the stream, or its refusal: lost (410) or unknown (404)."""
        await self._rebuild()
        where = self.streams.get(stream_id)
        if where is not None:
            return {"host": where[0], "generation": where[1]}
        if stream_id in self.lost:
            return replies.lost_stream(stream_id, self.lost[stream_id])
        return replies.unknown_stream(stream_id)

    async def open(self, cap_bytes: int, settings: dict) -> dict:
        """Open a stream of `settings` on the ready host with most room for `cap_bytes`; 503 (Retry-After)
        when none has room, 400 when the settings cannot work."""
        await self._rebuild()
        stream_id = uuid.uuid4().hex[:16]
        tried = set()
        while True:
            candidates = [(r.room(), i) for i, r in self.hosts.items() if r.ready and i not in tried]
            fitting = [(room, i) for room, i in candidates if room >= cap_bytes]
            if not fitting:
                return self._no_room(cap_bytes)
            _, index = max(fitting)
            tried.add(index)
            record = self.hosts[index]
            record.reserved[stream_id] = cap_bytes
            try:
                reply = await ray.get_actor(host_name(index), namespace=NAMESPACE).open.remote(stream_id, settings)
            except Exception as error:  # noqa: BLE001 - a host that died meanwhile: try the next one
                log.warning("host %d failed to open a stream: %s", index, error)
                reply = replies.refused(replies.NO_ROOM, f"Host {index} stopped.")
            refusal = replies.refusal_of(reply)
            if refusal is None and self.hosts.get(index) is record and record.generation == reply["generation"]:
                record.reserved[stream_id] = reply["allocated_bytes"]
                self.streams[stream_id] = (index, reply["generation"])
                return reply
            record.reserved.pop(stream_id, None)
            if refusal is None:  # made by a host that has started again since: not a stream of the record
                ray.get_actor(host_name(index), namespace=NAMESPACE).close.remote(stream_id, reply["generation"])
            # no room there after all (or the host started again while opening, and the session went
            # with it): the next host; settings that cannot work fail the same everywhere
            if refusal is not None and refusal["status"] != replies.NO_ROOM:
                return reply

    def _no_room(self, cap_bytes: int) -> dict:
        ready = [r for r in self.hosts.values() if r.ready]
        if not ready:
            return replies.refused(replies.NO_ROOM, "No stream host is ready yet (their models are loading); try "
                                   "again shortly.", retry_after=self.retry_after_s)
        largest = max(r.budget for r in ready)
        if cap_bytes > largest:
            return replies.refused(replies.BAD_INPUT, f"A cap of {format_bytes(cap_bytes)} is more than a stream "
                                   f"host's whole budget of {format_bytes(largest)}; give {format_bytes(largest)} or less.")
        most = max(r.room() for r in ready)
        return replies.refused(replies.NO_ROOM, f"No stream host has room for a {format_bytes(cap_bytes)} cap (the most "
                               f"any host has left is {format_bytes(max(most, 0))}); try again when streams close, or "
                               "give a smaller cap.", retry_after=self.retry_after_s)

    async def overview(self) -> dict:
        """Every host's generation, budget, room and stream count, as the directory sees them."""
        await self._rebuild()
        return {"hosts": [{"host": i, "generation": r.generation, "ready": r.ready, "budget": r.budget,
                           "room": r.room(), "streams": len(r.reserved)} for i, r in sorted(self.hosts.items())],
                "streams": len(self.streams)}
