"""What a cluster is started with, and the names its actors go by (so any front-door replica, the
directory and a restarted host find each other by name, in one Ray namespace)."""

from __future__ import annotations

from dataclasses import dataclass

NAMESPACE = "potwatch"
DIRECTORY = "potwatch-directory"
HOST_SETTINGS = ("threads", "dtype", "auto_allowed")  # a stream's settings that belong to its host, not to a client


def host_name(index: int) -> str:
    return f"potwatch-host-{index}"


@dataclass(frozen=True)
class ClusterConfig:
    """hosts: stream hosts (Ray actors), each with host_cpus CPUs (and host_gpus GPUs) of the cluster and
    budget bytes for its streams' caches. idle_s: a stream without a push, question or stats for this long
    is closed. push_wait_s: how long a push or question waits for the stream's previous one before it is
    refused as busy (503). threads: torch threads in each host (None: host_cpus). front_doors: Serve
    replicas of the HTTP front door. max_body: the largest request body taken (413 beyond). loopback: Ray
runs on this machine only (a local start): the front door keeps Serve's own sockets on 127.0.0.1 too."""

    model: str = "tiny"
    hosts: int = 1
    budget: int = 2 * 10**9
    host_cpus: float = 1.0
    host_gpus: float = 0.0
    threads: int | None = None
    device: str | None = None
    dtype: str | None = None
    idle_s: float = 300.0
    push_wait_s: float = 30.0
    front_doors: int = 1
    http_host: str = "127.0.0.1"
    port: int = 8000
    max_body: int = 32 * 10**6
    retry_after_s: int = 10
    loopback: bool = False

    def host_threads(self) -> int:
        return self.threads or max(int(self.host_cpus), 1)
