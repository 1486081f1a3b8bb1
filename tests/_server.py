"""`faceanonymixer serve` in a subprocess on a free loopback port, for the tests that talk to a real server."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAIN = "import sys; from faceanonymixer.cli import main; sys.exit(main(sys.argv[1:]))"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """Starts ``faceanonymixer serve ARGS --port P`` and waits until /healthz answers (120 s at most); its stdout and
    stderr go to ``log``. ``stop()`` sends SIGTERM (the graceful path) and returns the exit code."""

    def __init__(self, args: list[str], log: Path):  # serve's arguments without --port, file for its output
        import httpx
        self.port, self.log = free_port(), log
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT / "src")] + sys.path))
        self._logf = open(log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-c", MAIN, "serve", *args, "--port", str(self.port)],
                                     stdout=self._logf, stderr=subprocess.STDOUT, env=env)
        end = time.monotonic() + 120
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                self._logf.close()
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        self.stop()
        raise AssertionError(f"server did not answer in 120 s:\n{log.read_text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._logf.close()
        return self.proc.returncode
