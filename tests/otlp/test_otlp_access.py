"""Who may send, and over what: the bearer token of ``otlp.token_file``, TLS (``otlp.tls_cert`` /
``otlp.tls_key``), the Unix stream socket of ``otlp.unix_path``, the warning when listening beyond
loopback unprotected, and a bad token or certificate refused before any child starts."""

from __future__ import annotations

import http.client
import shutil
import socket
import ssl
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from agent_process import AgentProcess, AgentStartError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from .conftest import OtlpAgent, free_port, post


def one_span_request(span_number: int) -> bytes:
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add(name="access", start_time_unix_nano=10**18)
    span.trace_id, span.span_id = span_number.to_bytes(16, "big"), span_number.to_bytes(8, "big")
    return request.SerializeToString()


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_with_a_token_file_requests_without_the_token_get_401_and_with_it_200(
    otlp_agent: Callable[..., OtlpAgent], tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    agent = otlp_agent(tmp_path / "agent", otlp_token_file=str(token))
    body = one_span_request(1)
    assert post(agent.otlp_port, "/v1/traces", body)[0] == 401
    assert post(agent.otlp_port, "/v1/traces", body, headers={"Authorization": "Bearer wrong"})[0] == 401
    assert post(agent.otlp_port, "/v1/traces", body, headers={"Authorization": "Bearer s3cret-token"})[0] == 200
    assert agent.stats()["items_received"] == 1


def test_with_tls_the_receiver_speaks_https_only(
    otlp_agent: Callable[..., OtlpAgent], tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    agent = otlp_agent(tmp_path / "agent", otlp_tls_cert=str(cert), otlp_tls_key=str(key))
    context = ssl.create_default_context(cafile=str(cert))
    conn = http.client.HTTPSConnection("127.0.0.1", agent.otlp_port, context=context, timeout=10)
    conn.request("POST", "/v1/traces", body=one_span_request(2), headers={"Content-Type": "application/x-protobuf"})
    assert conn.getresponse().status == 200
    conn.close()
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):  # plain HTTP is not answered
        post(agent.otlp_port, "/v1/traces", one_span_request(3), timeout=15)
    assert agent.stats()["items_received"] == 1


def test_the_unix_stream_socket_receives_like_the_tcp_listener(
    otlp_agent: Callable[..., OtlpAgent], tmp_path: Path
) -> None:
    short = Path(tempfile.mkdtemp(prefix="at-otlp-", dir="/tmp"))
    try:
        path = short / "otlp.sock"
        agent = otlp_agent(tmp_path / "agent", otlp_unix_path=str(path))
        body = one_span_request(4)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(path))
            sock.sendall(
                b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
        assert agent.stats()["items_received"] == 1
        assert f"OTLP/HTTP receiver on unix:{path}" in agent.stderr_text
    finally:
        shutil.rmtree(short, ignore_errors=True)


def test_listening_beyond_loopback_without_token_or_tls_is_warned_about(
    otlp_agent: Callable[..., OtlpAgent], tmp_path: Path
) -> None:
    port = free_port()
    agent = AgentProcess(tmp_path / "agent", otlp_listen=f"0.0.0.0:{port}")
    try:
        agent.start()
        assert "beyond loopback, with neither otlp.token_file nor otlp.tls_cert" in agent.stderr_text
    finally:
        agent.cleanup()


@pytest.fixture
def unreadable_token(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "no-such-token"


def test_a_missing_token_file_or_a_bad_certificate_stops_the_agent_before_ingest_starts(
    tmp_path: Path, unreadable_token: Path
) -> None:
    bad_cert = tmp_path / "bad.pem"
    bad_cert.write_text("not a certificate\n")
    for settings in (
        {"otlp_token_file": str(unreadable_token)},
        {"otlp_tls_cert": str(bad_cert), "otlp_tls_key": str(bad_cert)},
    ):
        agent = AgentProcess(tmp_path / f"agent-{len(settings)}", otlp_listen=f"127.0.0.1:{free_port()}", **settings)
        with pytest.raises(AgentStartError):
            agent.start(timeout=10)
        assert agent.proc is not None and agent.proc.wait(5) == 2, agent.stderr_text
        assert "config error: OTLP receiver: cannot " in agent.stderr_text
        assert "ingest started" not in agent.stderr_text
        agent.cleanup()
