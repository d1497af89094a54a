"""A repeating command (monitor.py --watch) stops on SIGINT or SIGTERM after the work in progress, never in
the middle of it; a second Ctrl-C stops at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

from housing.cli import StopRequest


def test_sigterm_ends_the_wait_at_once_and_exits_0(capsys):
    with StopRequest() as stop:
        assert not stop.wait(0)
        os.kill(os.getpid(), signal.SIGTERM)  # handled on the main thread before the next line runs
        assert stop.wait(3600)  # returns at once: the request is already there
        assert stop.exit_code() == 0
    assert capsys.readouterr().err.splitlines()[-1] == "stopped"


def test_sigint_during_work_lets_it_finish_then_exits_130(capsys):
    finished = []
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)  # while "a round" runs: no KeyboardInterrupt here
        finished.append("the round")
        assert stop.wait(3600) and stop.exit_code() == 130
    assert finished == ["the round"]
    assert capsys.readouterr().err.splitlines()[-1] == "interrupted"


def test_a_second_ctrl_c_stops_at_once():
    with StopRequest(), pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        threading.Event().wait(1)  # not reached: the second signal raises


def test_the_previous_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with StopRequest():
        assert signal.getsignal(signal.SIGTERM) is not before[0]
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


WAITING = """
import os, signal, sys, threading, time
from housing.cli import StopRequest

with StopRequest() as stop:
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()  # lands while the main thread waits
    print(stop.wait(60), stop.exit_code())
"""


def test_a_signal_while_waiting_ends_the_wait():
    """The signal that lands in the middle of the wait between rounds (the common case) ends it; the process
    runs apart, so a stop request that deadlocked would end in the subprocess deadline, not hang the suite."""
    result = subprocess.run([sys.executable, "-c", WAITING], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["True", "0"], result.stdout + result.stderr
