"""Workers die with their launcher: a SIGKILLed torchrun must leave no orphan training behind.

Linux delivers a chosen signal to a process when its parent dies (prctl PR_SET_PDEATHSIG).
torchrun's workers ask for SIGKILL at start: an orphan would keep training and writing into the
same checkpoint directory beside a relaunched run. A graceful stop goes through torchrun
(it forwards SIGTERM), never through its death.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send `sig` to this process when its parent exits; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    # The parent may have died before prctl took effect: then no signal will ever come.
    if os.getppid() != parent or parent == 1:
        os.kill(os.getpid(), sig)
    return True


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ
