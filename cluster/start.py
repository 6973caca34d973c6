"""Start and stop a potwatch cluster: Ray (a local one, on loopback only, or an existing one), the
directory, the stream hosts, and the Serve front door. `potwatch cluster` and the tests both use it.

A local Ray listens on every interface by default. With RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (read when
Ray is imported, and by every process Ray starts, which inherit it) and the node address 127.0.0.1,
every Ray process listens on 127.0.0.1 only: the GCS, the raylet, the workers, the dashboard agent and
Serve's controller and proxy; the front door's replicas move Serve's one hard-wired "[::]" socket to
127.0.0.1 too (cluster/loopback.py). Checked with `ss -ltnp` in tests/test_cluster.py. A local cluster cannot be joined by other machines:
for many machines, start Ray with `ray start` as its docs say and pass its address."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, replace

from potwatch.cluster.config import DIRECTORY, NAMESPACE, ClusterConfig, host_name
from potwatch.errors import UserError

LOOPBACK = "127.0.0.1"
APP_NAME = "potwatch"
READY_WAIT_S = 600.0


def loopback_only() -> None:
    """Make a Ray started from this process bind to loopback (before `import ray` for this process)."""
    if "ray" in sys.modules and os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0":
        import ray._private.ray_constants as constants  # already imported: set the flag it read

        constants.ENABLE_RAY_CLUSTER = False
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


def start_ray(address: str | None = None, num_cpus: float | None = None, num_gpus: float | None = None) -> bool:
    """Connect to the Ray at `address`, or start a local one on loopback with `num_cpus`; True when this
    call started it (so stopping the cluster stops it too)."""
    if address is None:
        loopback_only()
    else:
        check_address(address)
    import ray

    if ray.is_initialized():
        return False
    options = dict(namespace=NAMESPACE, include_dashboard=False, log_to_driver=False)
    if address is None:
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, _node_ip_address=LOOPBACK, **options)
        return True
    try:
        ray.init(address=address, **options)
    except ConnectionError as error:
        raise UserError(f"No Ray cluster answers at {address} ({error}); start one with `ray start --head` or leave "
                        "--address out to start a local one.") from None
    return False


def check_address(address: str) -> None:
    """A one-sentence UserError, in seconds, for an address where no Ray answers (Ray itself retries for
    minutes); a loopback address keeps Ray's own connections on loopback (else it swaps 127.0.0.1 for
    the machine's address)."""
    import socket

    if address == "auto":
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address} is not a Ray address; give HOST:PORT of a Ray head node (e.g. "
                        "10.0.0.5:6379) or auto.")
    if host == "localhost" or host.startswith("127."):
        loopback_only()
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as error:
        raise UserError(f"No Ray cluster answers at {address} ({error.strerror or error}); start one with `ray start "
                        "--head`, or leave --address out to start a local one.") from None


@dataclass
class Cluster:
    """A started cluster: the directory's and hosts' actor handles, the front door's URL."""

    config: ClusterConfig
    directory: object
    hosts: list
    url: str
    owns_ray: bool

    def stop(self) -> None:
        """Stop the front door, the hosts and the directory (and Ray, if `start_cluster` started it)."""
        import ray
        from ray import serve

        try:
            serve.shutdown()
        finally:
            for actor in [*self.hosts, self.directory]:
                try:
                    ray.kill(actor, no_restart=True)
                except Exception:  # noqa: BLE001 - already gone
                    pass
            if self.owns_ray:
                ray.shutdown()


def start_cluster(config: ClusterConfig, address: str | None = None) -> Cluster:
    """Start Ray (unless running), the directory, `config.hosts` stream hosts, wait for their models, then
    the front door on config.http_host:config.port. A UserError when a host cannot load the model or
    Ray has not the CPUs/GPUs the hosts need."""
    config = replace(config, loopback=address is None)
    owns_ray = start_ray(address, num_cpus=None if address else max(config.hosts * config.host_cpus, 1),
                         num_gpus=None if address else (config.hosts * config.host_gpus or None))
    try:
        return _start(config, owns_ray)
    except BaseException:
        if owns_ray:
            import ray

            ray.shutdown()
        raise


def _start(config: ClusterConfig, owns_ray: bool) -> Cluster:
    import ray
    from ray import serve

    from potwatch.cluster.directory import Directory
    from potwatch.cluster.front_door import FrontDoor
    from potwatch.cluster.host import StreamHost

    _check_resources(config)
    directory = ray.remote(Directory).options(
        name=DIRECTORY, namespace=NAMESPACE, num_cpus=0, max_restarts=-1, max_concurrency=1000,
    ).remote(config.hosts, config.retry_after_s)
    hosts = [
        ray.remote(StreamHost).options(
            name=host_name(index), namespace=NAMESPACE, num_cpus=config.host_cpus, num_gpus=config.host_gpus,
            max_restarts=-1, max_task_retries=0, max_concurrency=64,
        ).remote(index, config)
        for index in range(config.hosts)
    ]
    cluster = Cluster(config, directory, hosts, f"http://{_url_host(config.http_host)}:{config.port}", owns_ray)
    try:
        for reply in ray.get([host.ready.remote() for host in hosts], timeout=READY_WAIT_S):
            refusal = reply.get("refused")
            if refusal:
                raise UserError(f"A stream host could not start: {refusal['detail']}")
        ray.get(directory.overview.remote())  # the directory knows every host before the first request
        serve.start(http_options={"host": config.http_host, "port": config.port}, proxy_location="HeadOnly")
        serve.run(FrontDoor.options(num_replicas=config.front_doors).bind(config), name=APP_NAME, route_prefix="/",
                  blocking=False)
        _wait_for_front_door(cluster.url)
    except BaseException:
        cluster.owns_ray = False  # the caller's clean-up stops Ray
        cluster.stop()
        raise
    return cluster


def _check_resources(config: ClusterConfig) -> None:
    import ray

    have = ray.cluster_resources()
    for name, each in (("CPU", config.host_cpus), ("GPU", config.host_gpus)):
        need = each * config.hosts
        if need > have.get(name, 0) + 1e-9:
            raise UserError(f"{config.hosts} hosts with {each:g} {name}s each need {need:g} {name}s, but this Ray "
                            f"cluster has {have.get(name, 0):g}; give fewer --hosts or fewer --host-{name.lower()}s.")


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return LOOPBACK
    return f"[{host}]" if ":" in host else host


def _wait_for_front_door(url: str, timeout_s: float = 120.0) -> None:
    """Until GET /cluster answers (Serve's proxy answers 503/404 while replicas start)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/cluster", timeout=10) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise UserError(f"The front door did not answer at {url} within {timeout_s:g} s; see Ray's logs in /tmp/ray.")
        time.sleep(0.5)
