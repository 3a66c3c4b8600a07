"""Real servers for tests: Redis and PostgreSQL (Debian's binaries, in temporary folders, either one over TLS with a
throwaway CA), an upstream that answers at once, and the proxy under uvicorn, each on a free loopback port and stopped
after. `stop()` and `start()` let a test kill a server mid-run."""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx2
import openai
import uvicorn

from blackbox_sdk.local import free_port
from blackbox_sdk.serve import ProxyConfig, create_app
from blackbox_sdk.serve._http import http_protocol

START_TIMEOUT_S = 30.0
PROXY_START_TIMEOUT_S = 180.0  # a proxy over a local model (or a tenant's reranker) loads it before /readyz answers


def _wait_for_port(port: int, process: subprocess.Popen[bytes] | None = None) -> None:
    """Until something accepts connections on 127.0.0.1:port (or the process died)."""
    import socket

    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before listening on {port}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listened on 127.0.0.1:{port} within {START_TIMEOUT_S}s")


def make_certificates(folder: Path) -> Path:
    """A throwaway CA (`ca.pem`) and a server certificate it signed for 127.0.0.1 and localhost (`server.pem`,
    `server.key`, the key readable by its owner only) in `folder`; returns the CA's path, what a client trusts."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(common: str) -> x509.Name:
        """A subject or issuer of one common name."""
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    valid = x509.CertificateBuilder().not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
    ca = valid.subject_name(name("bb-test-ca")).issuer_name(name("bb-test-ca")).public_key(ca_key.public_key()).serial_number(1)
    ca = ca.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256())
    names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    server = valid.subject_name(name("127.0.0.1")).issuer_name(ca.subject).public_key(key.public_key()).serial_number(2)
    server = server.add_extension(x509.SubjectAlternativeName(names), critical=False).sign(ca_key, hashes.SHA256())
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (folder / "server.key").write_bytes(private)
    os.chmod(folder / "server.key", 0o600)
    return folder / "ca.pem"


def proxy_ready(port: int, process: subprocess.Popen[Any], timeout_s: float) -> bool:
    """Whether a proxy process on `port` answers /readyz within `timeout_s` (False once it exits or the time is up)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx2.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                return True
        except httpx2.TransportError:
            time.sleep(0.05)
    return False


class RedisServer:
    """`redis-server` on a free loopback port, no persistence; `url` is redis://127.0.0.1:PORT/0, with the
    password in it (redis://:PASSWORD@...) for a server started with `--requirepass PASSWORD`. With `tls`, the
    port speaks TLS only (a certificate from a throwaway CA, `ca`, no client certificates asked) and `url` is
    rediss://...:PORT/0?ssl_ca_certs=CA. `options` go on its command line as they are (`--cluster-enabled yes`, ...)."""

    def __init__(self, password: str | None = None, *, tls: bool = False, options: tuple[str, ...] = ()) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="bb-redis-"))
        self.port = free_port()
        self.password = password
        self.ca = make_certificates(self.folder) if tls else None
        scheme, query = ("redis", "") if self.ca is None else ("rediss", f"?ssl_ca_certs={self.ca}")
        self.url = f"{scheme}://{'' if password is None else f':{password}@'}127.0.0.1:{self.port}/0{query}"
        self.options = options
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        """Start (or restart, empty) the server on the same port."""
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.folder)]
        if self.ca is not None:
            command[1:3] = ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no", "--tls-ca-cert-file", str(self.ca)]
            command += ["--tls-cert-file", str(self.folder / "server.pem"), "--tls-key-file", str(self.folder / "server.key")]
        command += [] if self.password is None else ["--requirepass", self.password]
        command += self.options
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_port(self.port, self._process)
        return self

    @contextmanager
    def paused(self) -> Iterator[None]:
        """The server stopped (SIGSTOP) inside the block, as a stalled host or a long GC pause is: it takes
        connections but answers nothing until it goes on (SIGCONT) at the block's end."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self._process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process = None

    def close(self) -> None:
        """Stop the server and remove its folder."""
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


class CountingRelay:
    """A TCP relay on a free loopback port to a server's `port`, counting the connections made through it: the server's
    own count (Redis's `total_connections_received`) misses those whose TLS handshake failed. A connection the server
    does not take (it is down) is closed at once, as a dropped one is."""

    def __init__(self, port: int) -> None:
        self._to, self.connections = port, 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        """Count each connection and pipe it to the server both ways, until the relay closes."""
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            try:
                server = socket.create_connection(("127.0.0.1", self._to))
            except OSError:
                client.close()
                continue
            for source, sink, replies in ((client, server, False), (server, client, True)):
                threading.Thread(target=self._pipe, args=(source, sink, replies), daemon=True).start()

    def passes(self, data: bytes, replies: bool) -> bool:
        """Whether a chunk goes on (`replies`: it is the server's); False cuts the connection. A subclass may drop some."""
        return True

    def _pipe(self, source: socket.socket, sink: socket.socket, replies: bool) -> None:
        """Copy `source` to `sink` until either ends or a chunk does not pass, then end both."""
        with suppress(OSError):
            while (data := source.recv(65536)) and self.passes(data, replies):
                sink.sendall(data)
        for end in (source, sink):
            with suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
        source.close()

    def close(self) -> None:
        """Take no more connections."""
        self._listener.close()


def _pg_bin(name: str) -> str:
    """A PostgreSQL server binary from Debian's package (not on PATH)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is not installed: apt-get install postgresql (scripts/setup.sh does)")
    return found[-1]


class PostgresServer:
    """A fresh PostgreSQL cluster (`initdb` in a temporary folder) on a free loopback port, trust
    authentication; run as the `postgres` user when the tests run as root (initdb refuses root). With `password`,
    TCP connections need it (scram-sha-256) and `url` holds it; with `tls`, the server takes TLS too (`ssl = on`,
    a certificate from a throwaway CA, `ca`), and plain connections still."""

    def __init__(self, password: str | None = None, *, tls: bool = False) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="bb-pg-"))
        self.port = free_port()
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        self.password = password
        self.url = f"postgresql://{self.user}{'' if password is None else f':{password}'}@127.0.0.1:{self.port}/postgres"
        self.ca = make_certificates(self.folder) if tls else None
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            os.chmod(self.folder, 0o700)
            for path in [self.folder, *self.folder.iterdir()]:
                os.chown(path, entry.pw_uid, entry.pw_gid)
        auth = ["-A", "trust"]
        if password is not None:
            (self.folder / "pwfile").write_text(password)
            auth = ["--auth-local", "trust", "--auth-host", "scram-sha-256", f"--pwfile={self.folder / 'pwfile'}"]
            os.chmod(self.folder / "pwfile", 0o644)
        self._run([_pg_bin("initdb"), "-D", str(self.folder / "data"), "-U", self.user, *auth, "--no-sync"])

    def _run(self, command: list[str]) -> None:
        """A command as the cluster's owner."""
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self) -> PostgresServer:
        """Start the server on its port, listening on loopback only."""
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        if self.ca is not None:
            options += f" -c ssl=on -c ssl_cert_file={self.folder / 'server.pem'} -c ssl_key_file={self.folder / 'server.key'}"
        self._run([_pg_bin("pg_ctl"), "-D", str(self.folder / "data"), "-o", options, "-l", str(self.folder / "log"), "-w", "start"])
        _wait_for_port(self.port)
        return self

    def stop(self) -> None:
        """Stop the server at once (immediate mode)."""
        self._run([_pg_bin("pg_ctl"), "-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop"])

    @contextmanager
    def paused(self) -> Iterator[None]:
        """The server stopped (SIGSTOP to the postmaster and every backend) inside the block, as a stalled host is: the
        kernel takes connections and data, nothing answers until it goes on (SIGCONT) at the block's end."""
        postmaster = int((self.folder / "data" / "postmaster.pid").read_text().split()[0])
        children = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True, check=False).stdout.split()
        pids = [postmaster, *map(int, children)]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in pids:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def close(self) -> None:
        """Stop the server and remove its folder."""
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.folder, ignore_errors=True)


@contextmanager
def sse_upstream(events: Callable[[Any], bytes]) -> Iterator[str]:
    """A fault double on a free loopback port for what a real server won't do on demand (a stream cut short, an error
    event mid-stream): every POST is answered 200 with the event-stream bytes `events(request headers)`, then the
    connection closes. Yields its /v1 base URL; stopped after."""
    from http.server import BaseHTTPRequestHandler

    class Streaming(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # http.server's name
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            self.wfile.write(events(self.headers))

        def log_message(self, *args: object) -> None:
            """Quiet."""

    with loopback(Streaming) as url:
        yield url


@contextmanager
def loopback(handler: type[Any]) -> Iterator[str]:
    """The /v1 base URL of an http.server request handler class served by a threaded server on a free loopback port,
    stopped after."""
    from http.server import ThreadingHTTPServer

    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def send_json(handler: Any, answer: object) -> None:
    """Answer an http.server request with `answer` as a 200 JSON body (a loopback double's whole reply)."""
    data = json.dumps(answer).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class InstantUpstream:
    """An OpenAI-compatible endpoint on a free loopback port that answers `answer` at once on `route`
    (chat completions unless told; 404 on other routes) with `status` and `headers`; `before` runs
    before each answer (to inject a fault)."""

    def __init__(
        self,
        answer: dict[str, object],
        before: Callable[[], object] | None = None,
        route: str = "/chat/completions",
        status: int = 200,
        headers: dict[str, str] | None = None,
    ) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        body = json.dumps(answer).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                chat = self.path.endswith(route)
                if chat and before is not None:
                    before()
                self.send_response(status if chat else 404)
                for name, value in (headers or {}).items() if chat else ():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body) if chat else 2))
                self.end_headers()
                self.wfile.write(body if chat else b"{}")

            def log_message(self, *args: object) -> None:
                """Quiet."""

        class Server(ThreadingHTTPServer):
            request_queue_size = 128  # a burst of requests at once is queued, not refused (the default holds 5)

        self._server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()


class Proxy:
    """The proxy app (`blackbox-sdk serve`) under uvicorn in a thread of this process, on a free loopback port:
    `create_app(config, **app)`, or an app built already (`built=`)."""

    def __init__(self, config: ProxyConfig | None = None, *, built: Any = None, **app: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.url}/v1"
        served = built if built is not None else create_app(config, **app)
        protocol = http_protocol(config or ProxyConfig())  # the connections' deadlines and error bodies, as `serve()` runs it
        settings = uvicorn.Config(served, host="127.0.0.1", port=self.port, log_level="warning", http=protocol)
        self.server = uvicorn.Server(settings)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Proxy:
        self.thread.start()
        deadline = time.monotonic() + PROXY_START_TIMEOUT_S
        while time.monotonic() < deadline:  # until the upstream client is built (/readyz)
            try:
                if httpx2.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return self
            except httpx2.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError("the proxy did not become ready")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)

    def client(self, **kwargs: Any) -> openai.OpenAI:
        """The openai package's own client, pointed at the proxy."""
        return openai.OpenAI(base_url=self.base_url, api_key=kwargs.pop("api_key", "sk-unused"), **kwargs)

    def post(self, path: str, content: bytes, **headers: str) -> httpx2.Response:
        """A raw POST (bodies the openai client would never send)."""
        return httpx2.post(f"{self.base_url}{path}", content=content, headers={"content-type": "application/json", **headers}, timeout=60)
