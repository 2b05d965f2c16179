"""A real S3 HTTP server on loopback for tests, benchmarks and the demo.

moto in server mode (``moto_server``) speaks the S3 REST API over HTTP, so
aiobotocore talks to it exactly as it talks to AWS (the in-process moto mock
does not intercept aiobotocore). The server runs as a child process on a
loopback address; :class:`S3Server` starts it, waits until it answers and
stops it by the PID it started, never by name.

Run ``python -m edgefill_devenv.s3 up`` / ``down`` (what ``make s3-up`` does)
to keep one running in the background with its state under the cache folder.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from edgefill_devenv.paths import state_dir

DEFAULT_HOST = "127.0.0.1"
ACCESS_KEY = "edgefill-test"
SECRET_KEY = "edgefill-test-secret"  # noqa: S105 - a local test server's fixed credential
REGION = "us-east-1"


def free_port(host: str = DEFAULT_HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _moto_server_argv() -> list[str]:
    exe = shutil.which("moto_server")
    if exe:
        return [exe]
    return [sys.executable, "-m", "moto.server"]


@dataclass
class S3Server:
    """A moto S3 server child process on ``host:port``."""

    host: str = DEFAULT_HOST
    port: int = 0
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment for clients (boto3, aiobotocore, the cache node)."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "EDGEFILL_S3_ENDPOINT": self.endpoint_url,
        }

    def start(self, timeout: float = 30.0) -> S3Server:
        if self.port == 0:
            self.port = free_port(self.host)
        log = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                [*_moto_server_argv(), "-H", self.host, "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            if not isinstance(log, int):
                log.close()
        wait_until_ready(self.endpoint_url, timeout, self.process)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def wait_until_ready(
    endpoint_url: str, timeout: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"moto_server exited with code {process.returncode} during start")
        try:
            with urllib.request.urlopen(endpoint_url + "/", timeout=2) as resp:  # noqa: S310
                resp.read()
                return
        except urllib.error.HTTPError:
            return  # it answered over HTTP: it is up
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"S3 server at {endpoint_url} not ready after {timeout}s: {last}")


# --- background server for make targets and the demo -------------------------


def _pid_file() -> Path:
    return state_dir() / "s3" / "server.json"


def up(host: str = DEFAULT_HOST, port: int = 9000) -> S3Server:
    existing = running()
    if existing is not None:
        return existing
    folder = _pid_file().parent
    folder.mkdir(parents=True, exist_ok=True)
    server = S3Server(host=host, port=port, log_path=folder / "moto.log").start()
    assert server.process is not None
    _pid_file().write_text(
        json.dumps({"pid": server.process.pid, "host": host, "port": server.port})
    )
    return server


def running() -> S3Server | None:
    path = _pid_file()
    if not path.exists():
        return None
    info = json.loads(path.read_text())
    try:
        os.kill(info["pid"], 0)
    except ProcessLookupError:
        path.unlink(missing_ok=True)
        return None
    return S3Server(host=info["host"], port=info["port"])


def down() -> bool:
    path = _pid_file()
    if not path.exists():
        return False
    info = json.loads(path.read_text())
    with contextlib.suppress(ProcessLookupError):
        os.killpg(info["pid"], signal.SIGTERM)
        for _ in range(100):
            os.kill(info["pid"], 0)
            time.sleep(0.05)
        os.killpg(info["pid"], signal.SIGKILL)
    path.unlink(missing_ok=True)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Local S3 test origin (moto server mode).")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="start the server in the background")
    p_up.add_argument("--host", default=DEFAULT_HOST)
    p_up.add_argument("--port", type=int, default=9000)
    sub.add_parser("down", help="stop the server started by 'up'")
    sub.add_parser("env", help="print shell exports for clients")
    args = parser.parse_args(argv)
    if args.cmd == "up":
        server = up(args.host, args.port)
        print(f"S3 origin at {server.endpoint_url} (access key {ACCESS_KEY})")
    elif args.cmd == "down":
        print("stopped" if down() else "not running")
    else:
        server_or_none = running()
        if server_or_none is None:
            print("not running", file=sys.stderr)
            return 1
        for k, v in server_or_none.env().items():
            print(f"export {k}={v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
