"""Threads that fit the machine: the cores a process may use (affinity, cgroup CPU quota), the choice
of threads from them, who wins when the user said something, and the CLI's OpenMP wait policy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from potwatch import threads as pw_threads
from potwatch.cgroup import (cpu_quota, group_dirs, memory_room, own_groups, parse_cfs, parse_cpu_max,
                             parse_inactive_file, parse_memory_limit)
from potwatch.errors import UserError
from potwatch.threads import (ThreadChoice, choose_threads, prefer_passive_wait, session_threads, threads_for,
                              usable_cores, use_threads)

ROOT = Path(__file__).resolve().parents[1]
DEMO_VIDEO = ROOT / "assets" / "demo.mp4"


@pytest.fixture
def torch_threads_back():
    """Tests here set torch's threads: put them back."""
    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)


# --- cgroup files ------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, cpus", [
    ("max 100000\n", None), ("150000 100000\n", 1.5), ("200000 100000", 2.0), ("50000 100000", 0.5),
    ("100000", 1.0), ("", None), ("lots 100000", None), ("-1 100000", None),
])
def test_cgroup_v2_cpu_max(text, cpus):
    assert parse_cpu_max(text) == cpus


@pytest.mark.parametrize("quota, period, cpus", [
    ("-1\n", "100000\n", None), ("250000\n", "100000\n", 2.5), ("100000", "100000", 1.0), ("x", "100000", None),
])
def test_cgroup_v1_cfs_quota(quota, period, cpus):
    assert parse_cfs(quota, period) == cpus


@pytest.mark.parametrize("text, limit", [
    ("max\n", None), ("9223372036854771712\n", None), ("2147483648\n", 2**31), ("", None), ("0", None),
])
def test_memory_limits_v1_and_v2(text, limit):
    assert parse_memory_limit(text) == limit


def test_inactive_file_is_read_by_its_key():
    stat = "anon 100\nfile 5000\ninactive_file 4096\nactive_file 904\n"
    assert parse_inactive_file(stat, "inactive_file") == 4096
    assert parse_inactive_file("total_inactive_file 77\n", "total_inactive_file") == 77
    assert parse_inactive_file(stat, "total_inactive_file") == 0


PROC_CGROUP_V1 = "9:name=systemd:/\n4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n1:cpuset:/\n0::/\n"
PROC_CGROUP_V2 = "0::/user.slice/app.scope\n"


def test_own_group_per_controller():
    assert own_groups(PROC_CGROUP_V1, "cpu") == ["/docker/abc"]
    assert own_groups(PROC_CGROUP_V1, "memory") == ["/docker/abc"]
    assert own_groups(PROC_CGROUP_V2, None) == ["/user.slice/app.scope"]
    assert own_groups(PROC_CGROUP_V2, "cpu") == []


def _write(folder: Path, **files: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("__", ".")).write_text(text)


def test_v2_quota_takes_the_tightest_group_up_the_tree(tmp_path):
    _write(tmp_path, cgroup__controllers="cpu memory\n", cpu__max="max 100000\n")
    _write(tmp_path / "user.slice", cpu__max="300000 100000\n")
    _write(tmp_path / "user.slice" / "app.scope", cpu__max="max 100000\n")
    assert group_dirs(tmp_path, "/user.slice/app.scope")[0] == tmp_path / "user.slice" / "app.scope"
    assert cpu_quota(tmp_path, PROC_CGROUP_V2) == 3.0  # the parent's limit binds the child
    assert cpu_quota(tmp_path, "0::/elsewhere\n") is None  # a group not visible here: the mount alone


def test_v1_quota_and_memory_room(tmp_path):
    _write(tmp_path / "cpu,cpuacct" / "docker" / "abc", cpu__cfs_quota_us="150000\n", cpu__cfs_period_us="100000\n")
    _write(tmp_path / "memory" / "docker" / "abc", memory__limit_in_bytes=f"{4 * 2**30}\n",
           memory__usage_in_bytes=f"{3 * 2**30}\n", memory__stat=f"total_inactive_file {2**29}\n")
    _write(tmp_path / "memory", memory__limit_in_bytes="9223372036854771712\n", memory__usage_in_bytes="1\n")
    assert cpu_quota(tmp_path, PROC_CGROUP_V1) == 1.5
    assert memory_room(tmp_path, PROC_CGROUP_V1) == 2**30 + 2**29  # limit − usage + droppable page cache


def test_v2_memory_room_and_no_limit(tmp_path):
    _write(tmp_path, cgroup__controllers="memory\n", memory__max="max\n", memory__current="5\n")
    assert memory_room(tmp_path, "0::/\n") is None
    _write(tmp_path, memory__max=f"{2**30}\n", memory__current=f"{2**30 + 5}\n")
    assert memory_room(tmp_path, "0::/\n") == 0  # over the limit: no room, never negative


def test_this_machine_reads_without_error():
    quota = cpu_quota()
    assert quota is None or quota > 0
    room = memory_room()
    assert room is None or room >= 0


# --- the choice --------------------------------------------------------------------------------------
@pytest.mark.parametrize("cores, sessions, threads", [
    (1, 1, 1), (2, 1, 1), (4, 1, 3), (16, 1, 15), (16, 4, 3), (4, 2, 1), (2, 4, 1), (8, 3, 2),
])
def test_threads_leave_a_core_and_share_the_rest(cores, sessions, threads):
    assert threads_for(cores, sessions) == threads
    assert threads_for(cores, sessions) * sessions <= max(cores - 1, sessions)  # never more than the budget


def test_usable_cores_is_affinity_cut_to_the_quota():
    assert usable_cores(affinity=8, quota=None) == 8
    assert usable_cores(affinity=8, quota=2.5) == 2  # the half core would be throttled, not run
    assert usable_cores(affinity=2, quota=16.0) == 2
    assert usable_cores(affinity=4, quota=0.5) == 1


def test_usable_cores_follows_the_real_affinity():
    assert usable_cores() <= len(os.sched_getaffinity(0))


def test_explicit_threads_win_and_bad_ones_are_refused():
    assert choose_threads(3, environ={"OMP_NUM_THREADS": "1"}) == ThreadChoice(3, "as asked")
    for bad in (0, -2, 1.5, True, "2"):
        with pytest.raises(UserError, match="whole number of at least 1"):
            choose_threads(bad)


def test_the_environment_is_kept_when_no_threads_are_asked():
    choice = choose_threads(None, environ={"OMP_NUM_THREADS": "3"})
    assert choice.threads is None and "OMP_NUM_THREADS=3" in choice.describe()
    assert choose_threads(None, environ={"MKL_NUM_THREADS": "2"}).threads is None
    chosen = choose_threads(None, sessions=2, environ={}, cores=9)
    assert chosen.threads == 4 and "shared by 2 sessions" in chosen.reason


def test_use_threads_sets_torch(torch_threads_back):
    choice = use_threads(1)
    assert torch.get_num_threads() == 1 and choice.threads == 1


def test_a_session_leaves_threads_alone_unless_asked(torch_threads_back, monkeypatch):
    for name in pw_threads.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    torch.set_num_threads(pw_threads.affinity_cores())  # a program's own choice, which looks like torch's default
    assert session_threads(None).threads is None
    assert torch.get_num_threads() == pw_threads.affinity_cores()
    choice = session_threads("auto")
    assert choice.threads == threads_for(usable_cores()) == torch.get_num_threads()
    assert session_threads(1).threads == 1 and torch.get_num_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert "OMP_NUM_THREADS=1" in session_threads("auto").reason
    with pytest.raises(UserError):
        session_threads("many")


def test_a_stream_session_takes_threads(demo_adapter, torch_threads_back):
    from potwatch.streaming.session import StreamSession

    torch.set_num_threads(2)
    session = StreamSession(demo_adapter, mem_cap="400kB")
    assert session.thread_choice.threads is None and torch.get_num_threads() == 2
    session = StreamSession(demo_adapter, mem_cap="400kB", threads=1)
    assert session.thread_choice.threads == 1 and torch.get_num_threads() == 1


def test_passive_wait_only_before_torch_and_never_over_the_users():
    assert prefer_passive_wait({}) is False  # torch is imported in this process: too late
    environ = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert prefer_passive_wait(environ) is False and environ["OMP_WAIT_POLICY"] == "ACTIVE"


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    environ = {key: value for key, value in os.environ.items() if key not in ("OMP_WAIT_POLICY",)}
    environ.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=environ,
                          timeout=300)


def test_the_cli_sets_the_wait_policy_before_torch_loads():
    code = ("import os, sys\nfrom potwatch.app.cli import main\nassert 'torch' not in sys.modules\n"
            "main(['policies'])\nprint(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")
    run = _python(code)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "PASSIVE True"
    run = _python(code, OMP_WAIT_POLICY="active")
    assert run.stdout.strip().splitlines()[-1] == "active True"  # the user's own policy stands


def test_watch_says_which_threads_and_why():
    command = [sys.executable, "-m", "potwatch.app.cli", "watch", str(DEMO_VIDEO), "--model", "tiny",
               "--max-frames", "4", "--json"]
    environ = {key: value for key, value in os.environ.items() if key not in pw_threads.THREAD_VARIABLES}
    run = subprocess.run([*command, "--threads", "1"], capture_output=True, text=True, cwd=ROOT, env=environ,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    import json

    assert json.loads(run.stdout)["threads"] == 1
    run = subprocess.run([*command[:-1]], capture_output=True, text=True, cwd=ROOT, env=environ, timeout=300)
    assert run.returncode == 0, run.stderr
    assert f"threads: {threads_for(usable_cores())} (" in run.stderr


def test_bad_thread_counts_exit_2_with_one_sentence(capsys):
    from potwatch.app.cli import main

    for command in (["watch", str(DEMO_VIDEO), "--threads", "0"], ["bench", "--threads", "-1", "--quick"],
                    ["serve", "--threads", "0"]):
        assert main(command) == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith("potwatch: error: ") and "whole number of at least 1" in last


@pytest.mark.parametrize("cores, max_sessions, threads, lanes, each", [
    (2, 4, None, 2, 1),   # this machine: two tabs run at once on a core each
    (2, 1, None, 1, 1),   # one tab: a core left, as `watch` leaves it
    (8, 4, None, 4, 2),
    (8, 1, None, 1, 7),
    (16, 3, None, 3, 5),
    (1, 4, None, 1, 1),
    (8, 4, 3, 2, 3),      # --threads 3: as many lanes as the cores hold
    (2, 4, 4, 1, 4),      # more threads than cores: one lane, as asked
])
def test_serve_lanes_give_each_tab_whole_cores_and_never_more_threads_than_cores(cores, max_sessions, threads,
                                                                                 lanes, each):
    from potwatch.threads import serve_lanes

    assert serve_lanes(cores, max_sessions, threads) == (lanes, each)
    if lanes > 1:
        assert lanes * each <= cores


def test_serve_threads_follow_the_environment_and_then_take_turns(monkeypatch):
    from potwatch.threads import use_serve_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    choice, lanes = use_serve_threads(None, 4)
    assert choice.threads is None and lanes == 1 and "OMP_NUM_THREADS=3" in choice.reason
    before = torch.get_num_threads()
    try:
        choice, lanes = use_serve_threads(1, 4)
        assert (choice.threads, torch.get_num_threads()) == (1, 1)
        assert lanes == min(4, pw_threads.usable_cores()) and "as asked" in choice.reason
    finally:
        torch.set_num_threads(before)
