"""A program driven through a real pseudo-terminal, the way a person at a keyboard drives it.

`pty.fork()` makes the terminal the child's controlling terminal, so what is typed goes through the
kernel's line discipline: echo, Ctrl-C (0x03) as SIGINT to the foreground process group, Ctrl-D as end of
input. Output is matched as text with colour and cursor codes stripped.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import termios
import time
from collections.abc import Mapping, Sequence

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\x1b[=>]|\r")


class Terminal:
    def __init__(
        self, argv: Sequence[str], cwd: str, env: Mapping[str, str], rows: int = 50, cols: int = 200
    ) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: becomes the program, nothing of the test runs here
            try:
                os.chdir(cwd)
                os.execvpe(argv[0], list(argv), dict(env))
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.raw = b""
        self.pos = 0  # where the next expect() starts looking
        self.returncode: int | None = None

    @property
    def text(self) -> str:
        return ANSI.sub("", self.raw.decode("utf-8", "replace"))

    def _read(self, timeout: float) -> bool:
        """Read what is there (waiting up to `timeout`); False once the program closed the terminal."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the child is gone
            return False
        self.raw += data
        return bool(data)

    def expect(self, pattern: str, timeout: float = 120.0) -> re.Match[str]:
        """Wait for `pattern` in the output after the last match; TimeoutError shows the output."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.text, self.pos)
            if m:
                self.pos = m.end()
                return m
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(min(left, 0.2)):
                m = rx.search(self.text, self.pos)
                if m:
                    self.pos = m.end()
                    return m
                raise TimeoutError(f"{pattern!r} did not appear; the terminal shows:\n{self.text[-4000:]}")

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def wait(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._read(0.1)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                return self.returncode
        raise TimeoutError(f"the program did not exit; the terminal shows:\n{self.text[-4000:]}")

    def close(self) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        os.close(self.fd)
