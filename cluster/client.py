"""A small Python client for the cluster's HTTP API, on the standard library (urllib) and OpenCV to
encode frames: no Ray needed on the machine with the cameras.

    from potwatch.cluster.client import ClusterClient
    stream = ClusterClient("http://127.0.0.1:8000").open(mem_cap="64MB")
    stream.push([frame], [0.0])           # RGB uint8 arrays and their stream times in seconds
    print(stream.ask("What happened?")["text"])
    stream.close()

A refusal raises `ClusterRefusal` (a UserError) with the HTTP status, the server's sentence and, for
503, the seconds it asks to wait."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence

from potwatch.errors import UserError


class ClusterRefusal(UserError):
    """The cluster refused a request: `status` (400, 404, 410, 413, 503), the sentence, `retry_after`."""

    def __init__(self, status: int, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.retry_after = status, detail, retry_after


class ClusterClient:
    def __init__(self, url: str = "http://127.0.0.1:8000", timeout_s: float = 300.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        """The JSON reply to `method path`, or a ClusterRefusal."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            raw = error.read()
            try:
                detail = json.loads(raw).get("detail") or raw.decode(errors="replace")
            except (ValueError, AttributeError):
                detail = raw.decode(errors="replace")
            retry = error.headers.get("Retry-After")
            raise ClusterRefusal(error.code, str(detail), float(retry) if retry else None) from None

    def open(self, **settings) -> "RemoteStream":
        """A new stream (settings: mem_cap, policy, kv_bits, fps, positions, max_new_tokens)."""
        reply = self.request("POST", "/streams", settings)
        return RemoteStream(self, reply["stream"], reply)

    def stream(self, stream_id: str) -> "RemoteStream":
        """A stream opened earlier, by its id."""
        return RemoteStream(self, stream_id, {})

    def overview(self) -> dict:
        return self.request("GET", "/cluster")


class RemoteStream:
    """One stream on the cluster. `opened`: what opening it answered (host, cap, settings)."""

    def __init__(self, client: ClusterClient, stream_id: str, opened: dict) -> None:
        self.client, self.id, self.opened = client, stream_id, opened

    def push(self, frames: Sequence, times: Sequence[float], kind: str = "jpeg", quality: int = 90) -> dict:
        """Push RGB uint8 frames (HxWx3 arrays) taken at stream `times` (seconds), encoded as JPEG or PNG."""
        from potwatch.cluster.frames import encode_image

        images = [encode_image(frame, kind, quality) for frame in frames]
        return self.push_encoded(images, times)

    def push_encoded(self, images: Sequence[str], times: Sequence[float]) -> dict:
        """Push frames already encoded (base64 JPEG or PNG text)."""
        body = {"frames": [{"t": float(t), "image": image} for t, image in zip(times, images)]}
        return self.client.request("POST", f"/streams/{self.id}/frames", body)

    def ask(self, question: str, max_new_tokens: int | None = None) -> dict:
        """The answer (text, display, stream_time_s: the stream time of the last frame it saw, ...)."""
        body = {"question": question}
        if max_new_tokens is not None:
            body["max_new_tokens"] = max_new_tokens
        return self.client.request("POST", f"/streams/{self.id}/ask", body)

    def stats(self) -> dict:
        return self.client.request("GET", f"/streams/{self.id}")

    def close(self) -> dict:
        return self.client.request("DELETE", f"/streams/{self.id}")
