"""What the control group lets this process use: its CPU quota and its memory room (cgroup v2 and v1).

A container or a systemd unit limits a process through its cgroup, which `os.cpu_count()` and
/proc/meminfo do not show: a container given 2 CPUs of a 64-core host still sees 64. A limit set on a
parent group binds its children, so every group from the process's own up to the mount is read and the
tightest limit wins. Reads only files; no torch (the CLI calls this before torch is imported)."""

from __future__ import annotations

from pathlib import Path

CGROUP_MOUNT = Path("/sys/fs/cgroup")
_NO_LIMIT_V1 = 2**62  # cgroup v1 writes "no limit" as a number near 2**63


def parse_cpu_max(text: str) -> float | None:
    """CPUs a cgroup v2 `cpu.max` allows ('150000 100000' -> 1.5); None for 'max ...' or unreadable text."""
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    try:
        quota = int(parts[0])
        period = int(parts[1]) if len(parts) > 1 else 100_000
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def parse_cfs(quota_text: str, period_text: str) -> float | None:
    """CPUs cgroup v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us` allow; None for -1 (no quota)."""
    try:
        quota, period = int(quota_text.strip()), int(period_text.strip())
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def parse_memory_limit(text: str) -> int | None:
    """Bytes in `memory.max` (v2) or `memory.limit_in_bytes` (v1); None for 'max' or v1's near-2**63 'no limit'."""
    text = text.strip()
    if not text or text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return value if 0 < value < _NO_LIMIT_V1 else None


def parse_inactive_file(stat_text: str, key: str) -> int:
    """Page cache the kernel can drop at once (`inactive_file` in v2's memory.stat, `total_inactive_file`
    in v1's): counted in the group's usage, yet free to take, as MemAvailable counts it."""
    for line in stat_text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


def own_groups(proc_cgroup: str, controller: str | None) -> list[str]:
    """The process's group path for a controller, from /proc/self/cgroup text: v2's '0::/path' when
    `controller` is None, else the v1 line naming it ('4:memory:/path', '1:cpu,cpuacct:/path')."""
    for line in proc_cgroup.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controller is None and parts[0] == "0" and controllers == "":
            return [path]
        if controller is not None and controller in controllers.split(","):
            return [path]
    return []


def group_dirs(mount: Path, own_path: str | None) -> list[Path]:
    """The group's folder and each parent up to the mount (the mount alone when the path is unknown,
    or not visible from inside a cgroup namespace)."""
    dirs = []
    if own_path:
        folder = mount / own_path.strip("/")
        if folder.is_dir():
            while folder != mount and mount in folder.parents:
                dirs.append(folder)
                folder = folder.parent
    return dirs + [mount]


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _proc_cgroup() -> str:
    return _read(Path("/proc/self/cgroup")) or ""


def cpu_quota(mount: Path = CGROUP_MOUNT, proc_cgroup: str | None = None) -> float | None:
    """CPUs the tightest cgroup quota allows this process (1.5 = one and a half), or None for no quota."""
    proc_cgroup = _proc_cgroup() if proc_cgroup is None else proc_cgroup
    quotas = []
    if (mount / "cgroup.controllers").exists():  # v2, one unified tree
        for folder in group_dirs(mount, next(iter(own_groups(proc_cgroup, None)), None)):
            text = _read(folder / "cpu.max")
            if text is not None and (quota := parse_cpu_max(text)) is not None:
                quotas.append(quota)
    else:
        for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
            v1 = mount / name
            if not v1.is_dir():
                continue
            for folder in group_dirs(v1, next(iter(own_groups(proc_cgroup, "cpu")), None)):
                quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
                if quota is not None and period is not None and (cpus := parse_cfs(quota, period)) is not None:
                    quotas.append(cpus)
            break
    return min(quotas) if quotas else None


def memory_room(mount: Path = CGROUP_MOUNT, proc_cgroup: str | None = None) -> int | None:
    """Bytes this process may still take before its tightest cgroup memory limit (limit − usage + the
    page cache the kernel drops first), or None when no group limits memory."""
    proc_cgroup = _proc_cgroup() if proc_cgroup is None else proc_cgroup
    if (mount / "cgroup.controllers").exists():
        dirs = group_dirs(mount, next(iter(own_groups(proc_cgroup, None)), None))
        names = ("memory.max", "memory.current", "inactive_file")
    else:
        dirs = group_dirs(mount / "memory", next(iter(own_groups(proc_cgroup, "memory")), None))
        names = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
    rooms = []
    for folder in dirs:
        limit = parse_memory_limit(_read(folder / names[0]) or "")
        usage = _read(folder / names[1])
        if limit is None or usage is None:
            continue
        try:
            used = int(usage.strip())
        except ValueError:
            continue
        cache = parse_inactive_file(_read(folder / "memory.stat") or "", names[2])
        rooms.append(max(limit - used + cache, 0))
    return min(rooms) if rooms else None
