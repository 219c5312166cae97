"""Runs one command-line step of a stage: its whole output goes to a log file beside the stage's
outputs; a failure raises StageFailed with the cause and the log's last lines, so no error is
hidden. A training step's progress is echoed from the run's own records (metrics.jsonl), never
parsed out of its console text."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional

from .runner import StageFailed

# The cause of a failed command: megactllm's one `error: ...` line, or the last line of a
# traceback ("[rank0]: pkg.Error: text" as torchrun prefixes it).
EXCEPTION = re.compile(r"^(\[rank\d+\]:\s*)?(?P<error>([\w.]*(Error|Exception)|error): .*)")


def megactllm_cmd(command: str, *args) -> list[str]:
    """`python -m megactllm COMMAND ARGS`: the installed package's entry point, from this interpreter."""
    return [sys.executable, "-m", "megactllm", command, *map(str, args)]


def torchrun_cmd(nproc: int, *args) -> list[str]:
    """torchrun from the running interpreter's environment (works inside an unactivated venv)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *map(str, args)]


def run_logged(cmd: Sequence[str], log_path: Path, *, cwd: Optional[Path] = None, env: Optional[dict] = None,
               metrics: Optional[Path] = None, verbose: bool = False,
               say: Callable[[str], None] = print, tail_lines: int = 40) -> None:
    """Runs cmd to completion, appending its stdout+stderr to log_path; echoes the records appended
    to `metrics` (a training run's metrics.jsonl) while it runs."""
    full_env = {**os.environ, **(env or {})}
    cause = None
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: deque[str] = deque(maxlen=tail_lines)
    follower = MetricsFollower(metrics, say) if metrics is not None and not verbose else None
    with open(log_path, "a", encoding="utf-8") as log:
        log.write("$ " + " ".join(str(c) for c in cmd) + "\n")
        log.flush()
        proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=full_env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace", bufsize=1)
        assert proc.stdout is not None
        try:
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
            code = proc.wait()
        finally:
            if follower is not None:
                follower.stop()
    if code != 0:
        shown = "\n".join("    " + t for t in tail)
        first = f"{cause}\n" if cause else ""
        raise StageFailed(f"{first}{' '.join(map(str, cmd[:4]))} ... exited with status {code}; "
                          f"the last lines of {log_path}:\n{shown}")


class MetricsFollower:
    """Echoes each record a training run appends to its metrics.jsonl, shortened to what a user
    follows (iteration, loss, learning rate, grad norm; validation metrics), until stopped."""

    def __init__(self, path: Path, say: Callable[[str], None], interval_s: float = 0.5):
        self.path, self.say, self.interval_s = Path(path), say, interval_s
        self._offset = self.path.stat().st_size if self.path.exists() else 0  # only this run's records
        self._pending = ""
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        while not self._done.wait(self.interval_s):
            self._read()

    def _read(self) -> None:
        try:
            with open(self.path, encoding="utf-8") as f:
                f.seek(self._offset)
                chunk = f.read()
                self._offset = f.tell()
        except FileNotFoundError:
            return
        lines = (self._pending + chunk).split("\n")
        self._pending = lines.pop()  # a record not yet written whole
        for line in lines:
            if line.strip():
                text = describe_record(json.loads(line))
                if text:
                    self.say("      " + text)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()
        self._read()  # what came after the last poll


def describe_record(record: dict) -> Optional[str]:
    """One metrics.jsonl record as a short progress line (None for kinds a user need not follow)."""
    kind = record.get("kind")
    if kind == "train":
        parts = [f"iter {record['iteration']}/{record['train_iters']}", f"tokens {record['consumed_tokens']:,}",
                 f"{record.get('loss_name', 'loss')} {record['loss']:.4f}", f"lr {record['lr']:.3e}"]
        if record.get("grad_norm") is not None:
            parts.append(f"grad_norm {record['grad_norm']:.3f}")
        return " | ".join(parts)
    if kind == "valid":
        # Without the DPO log-probabilities: the rewards say it in fewer numbers.
        metrics = [f"{k} {v:.4f}" for k, v in record["metrics"].items() if not k.startswith("logps/")]
        ppl = [f"ppl {record['ppl']:.3f}"] if "ppl" in record else []
        return " | ".join([f"validation at iter {record['iteration']}", *metrics, *ppl])
    return None
