"""`potwatch cluster` on a real local Ray (2 CPUs, loopback only): two stream hosts with the `demo` model,
the directory, and Ray Serve's FastAPI front door, driven over real HTTP on 127.0.0.1 by the Python client.

One cluster is started for the module (about 30 s on 2 shared cores) and stopped at its end, Ray with it.
Without Ray (the `cluster` extra) these tests skip, except under CI=true, where they fail: a CI run must
never pass by skipping them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from potwatch.cluster.client import ClusterClient, ClusterRefusal
from potwatch.cluster.config import ClusterConfig

CAP = "4MB"  # one stream's cache; a host's budget holds 5
BUDGET = 20 * 10**6
FPS = 2.0
IDLE_S = 12.0
FRAME = (32, 48)  # small frames keep the demo model fast
PUSH_WAIT_S = 0.5  # only requests of one stream at once wait for each other; the tests' clients send them one by one


def _ray_or_skip() -> None:
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError as error:
        reason = f"the cluster extra is not installed ({error.name}); pip install -e '.[cluster]'"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + "; CI must run these tests, not skip them")
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    _ray_or_skip()
    from potwatch.cluster.start import start_cluster

    config = ClusterConfig(model="demo", hosts=2, budget=BUDGET, host_cpus=1, threads=1, idle_s=IDLE_S,
                           push_wait_s=PUSH_WAIT_S, port=_free_port(), max_body=2 * 10**6, retry_after_s=7)
    started = start_cluster(config)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def client(cluster) -> ClusterClient:
    return ClusterClient(cluster.url, timeout_s=120)


def frames(count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*FRAME, 3), dtype=np.uint8) for _ in range(count)]


def push_all(stream, count: int, first: int = 0, per_push: int = 1, seed: int = 0) -> list[dict]:
    """Push `count` frames at the stream's fps from frame `first` on, `per_push` a request."""
    replies = []
    pixels = frames(count, seed)
    for start in range(0, count, per_push):
        chunk = pixels[start:start + per_push]
        times = [(first + start + i) / FPS for i in range(len(chunk))]
        replies.append(stream.push(chunk, times))
    return replies


def wait_until(check, timeout_s: float, every_s: float = 0.5):
    """The first true value of check() within timeout_s, else None."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every_s)
    return None


def test_the_cluster_listens_on_loopback_only(cluster):
    """Every socket Ray's processes and the front door listen on is bound to 127.0.0.1."""
    import ray

    output = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    pids = {str(p) for p in _ray_pids()}
    assert pids, "no Ray processes found"
    ours = [line for line in output.splitlines() if any(f"pid={pid}," in line for pid in pids)]
    assert any(f":{cluster.config.port} " in line for line in ours), "the front door's port is not among Ray's sockets"
    loopback = ("127.0.0.1:", "[::ffff:127.0.0.1]:", "[::1]:")
    wide = [line for line in ours if not line.split()[3].startswith(loopback)]
    assert not wide, "Ray listens beyond loopback:\n" + "\n".join(wide)
    assert ray.is_initialized()


def _ray_pids() -> list[int]:
    """This Ray's processes: the GCS, raylet, workers and agents (children of this test process)."""
    listing = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True, check=True).stdout
    children: dict[int, list[int]] = {}
    for line in listing.splitlines():
        pid, ppid = map(int, line.split())
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [os.getpid()]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def test_bad_requests_get_their_status_and_one_sentence(client):
    refusals = {}
    for name, settings in {"no cap": {}, "none": {"mem_cap": "none"}, "policy": {"mem_cap": CAP, "policy": "nope"},
                           "unknown": {"mem_cap": CAP, "colour": "red"}, "above budget": {"mem_cap": "1GB"},
                           "host's own": {"mem_cap": CAP, "threads": 8}, "ingest": {"mem_cap": CAP, "ingest": "often"}}.items():
        with pytest.raises(ClusterRefusal) as refused:
            client.open(**settings)
        refusals[name] = refused.value
    assert {name: r.status for name, r in refusals.items()} == dict.fromkeys(refusals, 400)
    assert "Unknown policy 'nope'" in refusals["policy"].detail
    assert "more than a stream host's whole budget" in refusals["above budget"].detail
    assert all(r.detail.endswith(".") and "\n" not in r.detail for r in refusals.values())

    with pytest.raises(ClusterRefusal) as unknown:
        client.stream("0123456789abcdef").stats()
    assert unknown.value.status == 404

    stream = client.open(mem_cap=CAP)
    try:
        stream.push(frames(1, 0), [1.0])
        for bad, status in ((["not base64!"], 400), (["aGVsbG8="], 400)):  # the second is base64 of no image
            with pytest.raises(ClusterRefusal) as refused:
                stream.push_encoded(bad, [2.0])
            assert refused.value.status == status
        with pytest.raises(ClusterRefusal) as backwards:
            stream.push(frames(1, 1), [0.5])
        assert backwards.value.status == 400 and "not after the stream's last frame" in backwards.value.detail
        with pytest.raises(ClusterRefusal) as too_many:
            stream.push_encoded(["x"] * 300, [float(i) for i in range(300)])
        assert too_many.value.status == 413
        with pytest.raises(ClusterRefusal) as too_large:
            stream.push_encoded(["A" * 2_100_000], [3.0])
        assert too_large.value.status == 413 and "limit" in too_large.value.detail
        assert stream.stats()["frames_seen"] == 1  # nothing of a refused push was taken
    finally:
        stream.close()


def test_streams_stay_on_their_host_and_keep_their_counts(cluster, client):
    """2 hosts, 4 streams: placed two on each (most room first); every reply of a stream names the host
    and generation it was opened on; each stream's frames are all taken, in order."""
    streams = [client.open(mem_cap=CAP, fps=FPS) for _ in range(4)]
    try:
        homes = [(s.opened["host"], s.opened["generation"]) for s in streams]
        assert sorted(h for h, _ in homes) == [0, 0, 1, 1]
        counts = [5, 7, 9, 6]
        for round_ in range(max(counts)):  # interleaved, as cameras push
            for stream, count, home in zip(streams, counts, homes):
                if round_ < count:
                    reply = push_all(stream, 1, first=round_, seed=round_)[0]
                    assert (reply["host"], reply["generation"]) == home
                    assert reply["taken"] == 1 and reply["frames_seen"] == round_ + 1
        for stream, count, home in zip(streams, counts, homes):
            answer = stream.ask("What happened?", max_new_tokens=3)
            assert answer["host"] == home[0] and answer["frames_seen"] == count
            assert answer["stream_time_s"] == (count - 1) / FPS and answer["meaningless"]
            stats = stream.stats()
            assert (stats["host"], stats["generation"]) == home
            assert stats["frames_seen"] == stats["frames_pushed"] == count and stats["turns"] == 1
            assert stats["cap_bytes"] == stats["mem_cap_bytes"] == 4 * 10**6 and stats["model"] == "demo"
            assert stats["peak_under_cap"] and stats["threads"] == 1 and stats["video_seconds"] == (count - 1) / FPS
    finally:
        for stream in streams:
            stream.close()
    with pytest.raises(ClusterRefusal) as closed:
        streams[0].stats()
    assert closed.value.status == 404


def test_frames_faster_than_the_fps_are_sampled(client):
    stream = client.open(mem_cap=CAP, fps=1.0, ingest="changed")  # any setting a session takes, but the host's
    try:
        reply = stream.push(frames(8, 3), [i * 0.25 for i in range(8)])  # 4 fps into a 1 fps stream
        assert reply["taken"] == 2 and reply["between_samples"] == 6 and reply["frames_seen"] == 2
    finally:
        stream.close()


def test_a_request_to_a_busy_stream_waits_its_bound_then_is_refused(client):
    """While a long push of a stream runs, a second request of the same stream waits PUSH_WAIT_S, then is
    refused with 503 and Retry-After and changes nothing; the long push takes all its frames."""
    stream = client.open(mem_cap=CAP)
    try:
        big = [np.full((480, 640, 3), 40 + i % 100, dtype=np.uint8) for i in range(256)]
        with ThreadPoolExecutor(1) as pool:
            long_push = pool.submit(stream.push, big, [i / FPS for i in range(256)])
            time.sleep(0.6)
            assert not long_push.done(), "the long push ended too soon to test a busy stream"
            started = time.monotonic()
            with pytest.raises(ClusterRefusal) as busy:
                stream.push(frames(1, 2), [500.0])
            waited = time.monotonic() - started
            reply = long_push.result(timeout=120)
        assert busy.value.status == 503 and busy.value.retry_after == 1
        assert "still taking its previous push or question" in busy.value.detail
        assert waited >= PUSH_WAIT_S
        assert reply["taken"] == 256 and reply["frames_seen"] == 256
        assert stream.push(frames(1, 2), [500.0])["frames_seen"] == 257  # the refused frame was not taken
    finally:
        stream.close()


def test_a_full_cluster_refuses_with_503_and_retry_after(client):
    opened = []
    try:
        for _ in range(10):  # the two budgets hold 5 streams each
            opened.append(client.open(mem_cap=CAP))
        with pytest.raises(ClusterRefusal) as full:
            client.open(mem_cap=CAP)
        assert full.value.status == 503 and full.value.retry_after == 7
        assert "No stream host has room for a 4.00 MB cap" in full.value.detail
        overview = client.overview()
        assert all(h["streams"] == 5 for h in overview["hosts"]), overview
        opened.pop().close()
        opened.append(client.open(mem_cap=CAP))  # a close gives the room back
    finally:
        for stream in opened:
            stream.close()


def test_a_killed_host_loses_its_streams_and_only_those(cluster, client):
    """Kill host 0's actor (Ray restarts it empty): its streams answer 410 at once, host 1's keep every
    frame while it restarts, and a new stream lands on the replacement, which has the most room."""
    import ray

    streams = [client.open(mem_cap=CAP, fps=FPS) for _ in range(4)]
    try:
        on = {0: [s for s in streams if s.opened["host"] == 0], 1: [s for s in streams if s.opened["host"] == 1]}
        assert len(on[0]) == len(on[1]) == 2
        for stream in streams:
            push_all(stream, 4, per_push=2)
        old_generation = on[0][0].opened["generation"]
        ray.kill(cluster.hosts[0], no_restart=False)
        started = time.monotonic()
        for stream in on[0]:
            with pytest.raises(ClusterRefusal) as lost:
                stream.push(frames(1, 9), [10.0])
            assert lost.value.status == 410 and "lost" in lost.value.detail
        lost_after_s = time.monotonic() - started
        print(f"410 for both streams of the killed host {lost_after_s:.1f} s after the kill")
        assert lost_after_s < 60
        pushed = 4
        for round_ in range(6):  # the other host keeps taking frames meanwhile
            for stream in on[1]:
                reply = push_all(stream, 1, first=pushed + round_, seed=round_)[0]
                assert reply["host"] == 1 and reply["frames_seen"] == pushed + round_ + 1
        for stream in on[0]:
            with pytest.raises(ClusterRefusal) as still_lost:
                stream.stats()
            assert still_lost.value.status == 410
        for stream in on[1]:
            assert stream.stats()["frames_seen"] == 10

        def replacement_ready():
            host = client.overview()["hosts"][0]
            return host["ready"] and host["generation"] != old_generation and host

        assert wait_until(replacement_ready, 120), "host 0 did not come back"
        fresh = client.open(mem_cap=CAP)
        try:
            assert fresh.opened["host"] == 0 and fresh.opened["generation"] != old_generation
            assert push_all(fresh, 2)[-1]["frames_seen"] == 2
        finally:
            fresh.close()
    finally:
        for stream in streams:
            try:
                stream.close()
            except ClusterRefusal:
                pass


def test_a_restarted_directory_finds_every_stream_again(cluster, client):
    """The directory holds nothing the hosts do not: killed and restarted, it asks them, and every stream
    carries on where it was."""
    import ray

    streams = [client.open(mem_cap=CAP) for _ in range(2)]
    try:
        for stream in streams:
            push_all(stream, 2)
        ray.kill(cluster.directory, no_restart=False)
        fresh_door = ClusterClient(cluster.url)  # same front door: it remembers places; look up anew too

        def overview():
            try:
                return fresh_door.overview()
            except ClusterRefusal:
                return None

        seen = wait_until(lambda: (o := overview()) and o["streams"] == 2 and o, 60)
        assert seen, "the directory did not come back with both streams"
        for stream in streams:
            assert fresh_door.stream(stream.id).push(frames(1, 5), [5.0])["frames_seen"] == 3
        opened = client.open(mem_cap=CAP)
        opened.close()
    finally:
        for stream in streams:
            stream.close()


def test_a_killed_front_door_replica_loses_no_stream(client):
    """Serve starts a new front-door replica; the streams, held by the hosts, carry on where they were."""
    import ray

    stream = client.open(mem_cap=CAP)
    try:
        push_all(stream, 3)
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                 if a["namespace"] == "serve" and "FrontDoor" in a["name"]]
        assert len(names) == 1, names
        ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)

        def answers():
            try:
                return stream.push(frames(1, 7), [time.monotonic()])
            except (ClusterRefusal, OSError):  # refused or cut off while Serve starts a replica
                return None

        reply = wait_until(answers, 120)
        assert reply and reply["frames_seen"] == 4 and reply["host"] == stream.opened["host"]
    finally:
        stream.close()


def test_load_8_streams_of_50_frames_loses_no_frame(client):
    """8 cameras push 50 frames each at once, 5 frames a request; every frame is taken, on one host per
    stream. Bounded: 50 frames a stream, and 240 s in all."""
    streams = [client.open(mem_cap=CAP, fps=FPS) for _ in range(8)]
    deadline = time.monotonic() + 240

    def camera(index: int):
        stream = streams[index]
        hosts = set()
        for start in range(0, 50, 5):
            assert time.monotonic() < deadline, "the load test ran past its time"
            reply = push_all(stream, 5, first=start, per_push=5, seed=index * 100 + start)[0]
            hosts.add(reply["host"])
        return hosts, stream.stats()

    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(camera, range(8)))
        for stream, (hosts, stats) in zip(streams, results):
            assert hosts == {stream.opened["host"]}
            assert stats["frames_seen"] == stats["frames_pushed"] == 50
            assert stats["frames_ingested"] == 50 and stats["dropped_frames"] == 0
    finally:
        for stream in streams:
            stream.close()


def test_an_idle_stream_is_closed_and_its_room_given_back(client):
    busy, idle = client.open(mem_cap=CAP), client.open(mem_cap=CAP)
    try:
        push_all(idle, 1)
        started = time.monotonic()

        def reaped():
            busy.push(frames(1, 1), [time.monotonic() - started])  # keeps `busy` in use meanwhile
            try:
                idle_host = next(h for h in client.overview()["hosts"] if h["host"] == idle.opened["host"])
            except StopIteration:
                return False
            same = busy.opened["host"] == idle.opened["host"]
            return idle_host["room"] == BUDGET - (busy.opened["allocated_bytes"] if same else 0)

        assert wait_until(reaped, IDLE_S * 4), "the idle stream was not closed"
        assert time.monotonic() - started >= IDLE_S * 0.9
        with pytest.raises(ClusterRefusal) as gone:
            idle.stats()
        assert gone.value.status == 410 and f"closed after {IDLE_S:g} s without" in gone.value.detail
        assert busy.stats()["frames_seen"] >= 1  # the stream in use stays
    finally:
        busy.close()


def test_bad_command_line_is_one_sentence_and_exit_2():
    for args, words in ((["--hosts", "0"], "--hosts 0 starts no stream host"),
                        (["--host-budget", "lots"], "--host-budget"),
                        (["--address", "127.0.0.1:1"], "No Ray cluster answers at 127.0.0.1:1")):
        run = subprocess.run([sys.executable, "-m", "potwatch.app.cli", "cluster", *args], capture_output=True,
                             text=True, timeout=60)
        assert run.returncode == 2 and run.stderr.startswith("potwatch: error: ") and words in run.stderr
        assert "Traceback" not in run.stderr
