"""Runs one command-line step of a stage: its whole output goes to a log file beside the stage's
outputs; the lines a user follows (training progress, validation) are echoed, indented; a failure
raises StageFailed with the log's last lines, so no error is hidden."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional

from .runner import StageFailed

# Training progress and validation lines of megactllm.training.metrics (rank 0 only prints them).
PROGRESS = re.compile(r"^(iter\s+\d+/\d+|validation at iter)")
# A Python exception line, as a rank prints it ("[rank0]: pkg.Error: text") or a tool does.
EXCEPTION = re.compile(r"^(\[rank\d+\]:\s*)?(?P<error>([\w.]*(Error|Exception)|error): .*)")


def run_logged(cmd: Sequence[str], log_path: Path, *, cwd: Optional[Path] = None, env: Optional[dict] = None,
               echo: Optional[re.Pattern] = None, verbose: bool = False,
               say: Callable[[str], None] = print, tail_lines: int = 40) -> None:
    """Runs cmd to completion, appending its stdout+stderr to log_path."""
    full_env = {**os.environ, **(env or {})}
    cause = None
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: deque[str] = deque(maxlen=tail_lines)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write("$ " + " ".join(str(c) for c in cmd) + "\n")
        log.flush()
        proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=full_env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace", bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            log.flush()  # a user may follow the log with tail -f
            tail.append(line.rstrip("\n"))
            found = EXCEPTION.match(line)
            if found and "ChildFailedError" not in line:  # torchrun's wrapper names no cause
                cause = found.group("error").strip()
            if verbose:
                sys.stdout.write(line)
                sys.stdout.flush()
            elif echo is not None and echo.search(line):
                say("      " + _shorten(line.rstrip()))
        code = proc.wait()
    if code != 0:
        shown = "\n".join("    " + t for t in tail)
        first = f"{cause}\n" if cause else ""
        raise StageFailed(f"{first}{' '.join(map(str, cmd[:4]))} ... exited with status {code}; "
                          f"the last lines of {log_path}:\n{shown}")


def _shorten(line: str, keep: int = 5) -> str:
    """A training log line cut to its first fields (iteration, tokens, loss, lr, grad norm); a
    validation line without the DPO log-probabilities (the rewards say it in fewer numbers)."""
    fields = line.split(" | ")
    if line.startswith("iter"):
        return " | ".join(fields[:keep])
    return " | ".join(f for f in fields if not f.startswith("logps/"))


def python_cmd(script: str, *args) -> list[str]:
    return [sys.executable, script, *map(str, args)]


def torchrun_cmd(nproc: int, *args) -> list[str]:
    """torchrun from the running interpreter's environment (works inside an unactivated venv)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *map(str, args)]
