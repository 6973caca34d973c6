"""A server's port checked before anything slow starts (`serve` loads a model, `cluster` starts Ray), so a
port already taken is one sentence in a second, not a traceback minutes later."""

from __future__ import annotations

import socket

from potwatch.errors import UserError


def check_port(host: str, port: int) -> None:
    """Bind `host`:`port` once and let it go (the server binds it again right after), or a UserError."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as error:
        raise UserError(f"Port {port} on {host} is taken or cannot be bound ({error.strerror}); pick another with "
                        "--port or --host.") from None
