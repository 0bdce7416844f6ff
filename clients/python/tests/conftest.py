"""Fixtures: one real ``chat-engine serve`` for the session (its own private PostgreSQL in a
temporary data dir), tenants with a widget key and agents made through the real API, and a
TCP proxy whose connections a test can cut."""

from __future__ import annotations

import os
import queue
import secrets
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from chat_engine_sdk.pb.chatengine.admin.v1 import tenant_pb2, tenant_pb2_grpc
from chat_engine_sdk.pb.chatengine.v1 import agent_pb2, agent_pb2_grpc, auth_pb2, auth_pb2_grpc, common_pb2

REPO = Path(__file__).resolve().parents[3]
OPERATOR_TOKEN = "py-sdk-operator-" + secrets.token_hex(8)
ORIGIN = "https://shop.example"
PASSWORD = "agent-password-123"
# Access tokens live this long on the test server, so every test also exercises the
# client's refresh before expiry.
ACCESS_TTL = 6
# Guards against a broken server hanging the suite; not timing goals.
START_BOUND = 180.0
WAIT = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    addr: str
    log: Path
    proc: subprocess.Popen

    def channel(self, addr: str | None = None) -> grpc.Channel:
        return grpc.insecure_channel(addr or self.addr)


@pytest.fixture(scope="session")
def server():
    binary = Path(os.environ.get("CHAT_ENGINE_BIN", REPO / "target" / "debug" / "chat-engine"))
    if not binary.exists():
        pytest.fail(f"{binary} not found: build it with `cargo build` first")
    data = Path(tempfile.mkdtemp(prefix="chat-engine-py-"))
    data.chmod(0o755)  # the cluster runs as `postgres` when the tests run as root
    addr = f"127.0.0.1:{free_port()}"
    log = data / "server.log"
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "CHAT_ENGINE_DATABASE_URL", "CHAT_ENGINE_MIGRATION_DATABASE_URL",
                        "CHAT_ENGINE_CONFIG")}
    env.update(CHAT_ENGINE_DATA_DIR=str(data), CHAT_ENGINE_OPERATOR_TOKEN=OPERATOR_TOKEN,
               CHAT_ENGINE_ACCESS_TOKEN_TTL_SECS=str(ACCESS_TTL), CHAT_ENGINE_SHUTDOWN_GRACE_SECS="2")
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(binary), "serve", "--listen", addr], env=env, stdout=out, stderr=out)
    srv = Server(addr, log, proc)
    deadline = time.monotonic() + START_BOUND
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"chat-engine exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                with srv.channel() as ch:
                    tenant_pb2_grpc.TenantServiceStub(ch).ListTenants(
                        tenant_pb2.ListTenantsRequest(), metadata=[("authorization", f"Bearer {OPERATOR_TOKEN}")],
                        timeout=2)
                break
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    pytest.fail(f"chat-engine did not answer within {START_BOUND}s:\n{log.read_text()[-4000:]}")
                time.sleep(0.3)
        yield srv
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        subprocess.run(["rm", "-rf", str(data)], check=False)


@dataclass
class Tenant:
    id: str
    slug: str
    api_key: str
    admin_token: str
    server: Server

    def agent(self, name: str, *, status: int = common_pb2.AGENT_STATUS_OFFLINE) -> str:
        """Creates an agent (as the admin); returns their email (password: PASSWORD)."""
        email = f"{name}@{self.slug}.example"
        with self.server.channel() as ch:
            agent_pb2_grpc.AgentServiceStub(ch).CreateAgent(
                agent_pb2.CreateAgentRequest(email=email, display_name=name, role=common_pb2.AGENT_ROLE_AGENT,
                                             password=PASSWORD, max_concurrent_chats=3),
                metadata=[("authorization", f"Bearer {self.admin_token}")])
        return email


@pytest.fixture
def tenant(server) -> Tenant:
    """A new tenant with an admin and a widget key allowed from ORIGIN."""
    slug = "py-" + uuid.uuid4().hex[:12]
    op = [("authorization", f"Bearer {OPERATOR_TOKEN}")]
    with server.channel() as ch:
        tenants = tenant_pb2_grpc.TenantServiceStub(ch)
        created = tenants.CreateTenant(tenant_pb2.CreateTenantRequest(
            name=f"Tenant {slug}", slug=slug,
            initial_admin=tenant_pb2.InitialAdmin(email=f"admin@{slug}.example", display_name="Admin",
                                                  password="admin-password-123")), metadata=op)
        key = tenants.CreateApiKey(tenant_pb2.CreateApiKeyRequest(
            tenant_id=created.tenant.id, name="site", allowed_domains=[ORIGIN]), metadata=op)
        admin = auth_pb2_grpc.AuthServiceStub(ch).Login(auth_pb2.LoginRequest(
            tenant_slug=slug, email=f"admin@{slug}.example", password="admin-password-123"))
    return Tenant(created.tenant.id, slug, key.secret, admin.tokens.access_token, server)


class Pump:
    """Reads an iterator on a thread of its own so a test can wait with a bound."""

    def __init__(self, it):
        self.it = it
        self.q: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            for item in self.it:
                self.q.put(("item", item))
        except BaseException as e:  # handed to the test
            self.q.put(("error", e))
        self.q.put(("end", None))

    def next(self, timeout: float = WAIT):
        try:
            kind, value = self.q.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no stream item within {timeout}s") from None
        if kind == "error":
            raise value
        if kind == "end":
            raise AssertionError("stream ended")
        return value

    def until(self, pred, timeout: float = WAIT):
        deadline = time.monotonic() + timeout
        while True:
            item = self.next(max(0.01, deadline - time.monotonic()))
            if pred(item):
                return item


class Proxy:
    """A TCP proxy in front of the server: :meth:`cut` drops every open connection (as a
    network failure would) and refuses new ones until :meth:`restore`."""

    def __init__(self, upstream: str):
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.addr = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.refusing = False
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                if self.refusing:
                    client.close()
                    continue
                self.accepted += 1
                up = socket.create_connection(self.upstream)
                self.conns += [client, up]
            for a, b in ((client, up), (up, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        with self.lock:
            self.refusing = True
            for s in self.conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self.conns.clear()

    def restore(self):
        with self.lock:
            self.refusing = False

    def close(self):
        self.cut()
        self.sock.close()


@pytest.fixture
def proxy(server):
    p = Proxy(server.addr)
    yield p
    p.close()
