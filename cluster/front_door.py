"""The HTTP front door: a Ray Serve FastAPI deployment, any number of replicas, holding no stream.

Each request for a stream asks the directory where it lives (a replica remembers the answer; a stale one
only costs a 410 or 404 from the host, which is the truth anyway) and calls that host directly, so every
request of a stream reaches the one process holding it. Refusals become their status and potwatch's
one-sentence wording as `{"detail": ...}`; 503s carry Retry-After.

The API (docs/cluster.md):
  POST   /streams                 {"mem_cap": "64MB", "policy", "kv_bits", "fps", "positions", "max_new_tokens"}
  POST   /streams/{id}/frames     {"frames": [{"t": seconds, "image": base64 JPEG or PNG}, ...]}
  POST   /streams/{id}/ask        {"question": "...", "max_new_tokens": optional}
  GET    /streams/{id}            the stream's figures (as `watch --json`)
  DELETE /streams/{id}
  GET    /cluster                 the hosts, their budgets and room"""

import json  # no `from __future__ import annotations`: FastAPI reads the routes' real annotations
from collections import OrderedDict

import ray
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from potwatch.cluster import bodies, replies
from potwatch.cluster.config import DIRECTORY, NAMESPACE, ClusterConfig, host_name
from potwatch.compression.mem_cap import format_bytes

PLACES_KEPT = 100_000  # stream -> (host, generation) a replica remembers

app = FastAPI(title="potwatch cluster", docs_url=None, redoc_url=None, openapi_url=None)


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(app)
class FrontDoor:
    def __init__(self, config: ClusterConfig) -> None:
        if config.loopback:
            from potwatch.cluster.loopback import keep_replica_grpc_on_loopback

            keep_replica_grpc_on_loopback()
        self.config = config
        self.directory = ray.get_actor(DIRECTORY, namespace=NAMESPACE)
        self.places: OrderedDict[str, tuple[int, str]] = OrderedDict()
        self.handles: dict[int, object] = {}

    async def _body(self, request: Request) -> dict:
        """The request's JSON object, or a BadRequest: 413 past max_body, 400 when it is no JSON object."""
        length = request.headers.get("content-length")
        limit = self.config.max_body
        too_large = f"The request is larger than this cluster's {format_bytes(limit)} limit; push fewer or smaller frames at a time."
        if length is not None and length.isdigit() and int(length) > limit:
            raise bodies.BadRequest(replies.TOO_LARGE, too_large)
        raw = bytearray()
        async for chunk in request.stream():
            raw.extend(chunk)
            if len(raw) > limit:
                raise bodies.BadRequest(replies.TOO_LARGE, too_large)
        try:
            body = json.loads(bytes(raw) or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise bodies.BadRequest(replies.BAD_INPUT, "The request body is not JSON; send a JSON object.") from None
        if not isinstance(body, dict):
            raise bodies.BadRequest(replies.BAD_INPUT, "The request body is not a JSON object; send one, like {\"question\": \"...\"}.")
        return body

    async def _ask_directory(self, method: str, *args) -> dict:
        """The directory's reply; while Ray starts it again (it holds nothing the hosts do not) a 503."""
        try:
            return await getattr(self.directory, method).remote(*args)
        except ray.exceptions.RayActorError:
            return replies.refused(replies.NO_ROOM, "The cluster's directory is starting again; send the request "
                                   "again in a moment.", retry_after=1)

    def _host(self, index: int):
        if index not in self.handles:
            self.handles[index] = ray.get_actor(host_name(index), namespace=NAMESPACE)
        return self.handles[index]

    async def _on_host(self, stream_id: str, method: str, *args) -> JSONResponse:
        """Call `method` on the stream's host; a host that died under the call loses the stream (410)."""
        where = self.places.get(stream_id)
        if where is None:
            reply = await self._ask_directory("lookup", stream_id)
            if replies.refusal_of(reply):
                return bodies.answer(reply)
            where = (reply["host"], reply["generation"])
            self.places[stream_id] = where
            while len(self.places) > PLACES_KEPT:
                self.places.popitem(last=False)
        index, generation = where
        try:
            reply = await getattr(self._host(index), method).remote(stream_id, generation, *args)
        except (ray.exceptions.RayActorError, ValueError):  # ValueError: no actor of that name any more
            self.places.pop(stream_id, None)
            self.handles.pop(index, None)
            reply = replies.lost_stream(stream_id, f"its host {index} stopped")
        refusal = replies.refusal_of(reply)
        if refusal and refusal["status"] in (replies.UNKNOWN, replies.LOST) or method == "close":
            self.places.pop(stream_id, None)
        return bodies.answer(reply)

    @app.post("/streams")
    async def open_stream(self, request: Request) -> JSONResponse:
        try:
            body = await self._body(request)
            settings, cap = bodies.open_settings(body)
        except bodies.BadRequest as error:
            return JSONResponse({"detail": error.detail}, status_code=error.status)
        return bodies.answer(await self._ask_directory("open", cap, settings), status=201)

    @app.post("/streams/{stream_id}/frames")
    async def push(self, stream_id: str, request: Request) -> JSONResponse:
        try:
            times, images = bodies.push_frames(await self._body(request))
        except bodies.BadRequest as error:
            return JSONResponse({"detail": error.detail}, status_code=error.status)
        return await self._on_host(stream_id, "push", times, images)

    @app.post("/streams/{stream_id}/ask")
    async def ask(self, stream_id: str, request: Request) -> JSONResponse:
        try:
            body = await self._body(request)
        except bodies.BadRequest as error:
            return JSONResponse({"detail": error.detail}, status_code=error.status)
        question = body.get("question")
        if not isinstance(question, str):
            return JSONResponse({"detail": "Give the question as text: {\"question\": \"What happened?\"}."}, status_code=400)
        return await self._on_host(stream_id, "ask", question, body.get("max_new_tokens"))

    @app.get("/streams/{stream_id}")
    async def stats(self, stream_id: str) -> JSONResponse:
        return await self._on_host(stream_id, "stats")

    @app.delete("/streams/{stream_id}")
    async def close(self, stream_id: str) -> JSONResponse:
        return await self._on_host(stream_id, "close")

    @app.get("/cluster")
    async def overview(self) -> JSONResponse:
        return bodies.answer(await self._ask_directory("overview"))
