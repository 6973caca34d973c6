"""Keep a Serve replica's own gRPC server on loopback, for a local cluster.

Ray Serve 2.60 starts, in every replica, a gRPC server for calls between deployments, bound to "[::]:0"
(every interface) whatever Ray's node address is, and without a setting to change it. On a local
cluster (loopback only) the front door's replicas bind it to 127.0.0.1 instead, by replacing the
function Serve's replica module binds it with, before Serve calls it (after the replica's __init__).
tests/test_cluster.py checks with `ss` that no Ray process listens beyond loopback, so a Ray release
that moves this fails there first."""

from __future__ import annotations


def keep_replica_grpc_on_loopback() -> bool:
    """Bind this replica's inter-deployment gRPC server to 127.0.0.1; False when Serve has no such hook."""
    try:
        from ray.serve._private import replica
    except ImportError:
        return False
    bind = getattr(replica, "add_port_to_grpc_server", None)
    if bind is None or getattr(bind, "potwatch_loopback", False):
        return bind is not None

    def bind_on_loopback(server, address):
        if isinstance(address, str) and address.startswith("[::]:"):
            address = "127.0.0.1:" + address.rsplit(":", 1)[1]
        return bind(server, address)

    bind_on_loopback.potwatch_loopback = True
    replica.add_port_to_grpc_server = bind_on_loopback
    return True
