"""/proc reading against the live kernel: race-free capture, zombies, the snapshot vs ps."""

from __future__ import annotations

import os
import select
import subprocess
import threading
import time

from app import procfs
from tests.helpers import exec_done


def test_capture_pins_the_life_with_a_pidfd() -> None:
    p = subprocess.Popen(["sleep", "30"])
    try:
        exec_done(p.pid)
        got = procfs.capture(p.pid)
        assert got is not None
        info, pidfd = got
        assert info.stat.pid == p.pid and info.stat.comm == "sleep"
        assert info.argv == ("sleep", "30") and info.exe is not None
        assert info.exe.endswith("/sleep")
        assert info.uid == os.getuid()
        assert info.pidfd_ino == os.fstat(pidfd).st_ino  # pidfs: a per-boot unique id
        assert not readable(pidfd)
        p.kill()
        p.wait()
        assert readable(pidfd)  # a pidfd polls readable once its process exits
        os.close(pidfd)
    finally:
        p.kill()
        p.wait()


def test_a_zombie_still_has_its_stat_and_a_reaped_pid_has_none() -> None:
    p = subprocess.Popen(["sh", "-c", "exit 3"])
    deadline = time.monotonic() + 5
    while procfs.read_stat(p.pid).state != "Z" and time.monotonic() < deadline:
        time.sleep(0.001)
    info = procfs.capture_closed(p.pid)
    assert info is not None and info.stat.state == "Z"
    assert info.stat.exit_code == 0x300  # field 52: the wait status waitpid will report
    assert not procfs.process_running(p.pid) and procfs.pid_exists(p.pid)
    p.wait()
    assert procfs.capture(p.pid) is None
    assert not procfs.process_running(p.pid) and not procfs.pid_exists(p.pid)


def test_threads_are_not_lives() -> None:
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        tid = t.native_id
        assert tid is not None and tid != os.getpid()
        assert procfs.capture(tid) is None  # pidfd_open refuses a non-leader thread
        assert procfs.thread_group_of(tid) == os.getpid()
        assert procfs.read_stat(os.getpid()).num_threads >= 2
        assert procfs.process_running(os.getpid())
        assert tid not in set(procfs.list_pids())
    finally:
        stop.set()
        t.join()


def test_snapshot_agrees_with_ps() -> None:
    before = _ps()
    snap = {i.stat.pid: i for i in procfs.snapshot()}
    after = _ps()
    steady = before & after  # processes that lived through both ps runs
    assert steady <= set(snap)
    for pid in set(snap) - (before | after):
        # Seen only by the snapshot: a process that came and went between the ps runs.
        assert _gone(pid, snap[pid].stat.start_ticks)
    for pid in steady:
        st = procfs.read_stat(pid)
        assert snap[pid].stat.start_ticks == st.start_ticks


def _ps() -> set[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid="], capture_output=True, text=True, check=True)
    return {int(x) for x in out.stdout.split()}


def _gone(pid: int, start_ticks: int) -> bool:
    try:
        return procfs.read_stat(pid).start_ticks != start_ticks
    except OSError:
        return True


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])
