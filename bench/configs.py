"""Configuration files for the benchmark: certificate, backend nginx, proxy nginx, teeproxy."""

from __future__ import annotations

import json
import os
import resource
from dataclasses import dataclass
from pathlib import Path

import trustme

SMALL_BODY = "hello, world\n"  # 13 bytes
ONE_MIB = 1024 * 1024

# Test (f): the routes teeproxy signs receipts for (proxy/default.toml [receipts] routes).
CHAT_PATH = "/v1/chat/completions"  # a small JSON completion, answered by the backend nginx
STREAM_PATH = "/v1/completions"  # an SSE completion, streamed by sse_server.py
CHAT_REQUEST = (
    '{"model":"bench-model","messages":[{"role":"system","content":"You are terse."},'
    '{"role":"user","content":"Say hello."}],"max_tokens":16,"temperature":0}'
)
CHAT_RESPONSE = (
    '{"id":"chatcmpl-bench0001","object":"chat.completion","created":1700000000,'
    '"model":"bench-model","system_fingerprint":"fp_bench","choices":[{"index":0,'
    '"message":{"role":"assistant","content":"Hello! How can I help you today?"},'
    '"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":19,'
    '"completion_tokens":9,"total_tokens":28}}'
)
STREAM_REQUEST = '{"model":"bench-model","prompt":"Count to twenty.","max_tokens":20,"stream":true}'


@dataclass
class Certs:
    ca_file: Path
    cert_file: Path
    key_file: Path


def make_certs(directory: Path) -> Certs:
    """An ECDSA P-256 CA and leaf for 127.0.0.1/localhost/::1 (trustme's default key type)."""
    ca = trustme.CA(key_type=trustme.KeyType.ECDSA)
    leaf = ca.issue_cert("127.0.0.1", "localhost", "::1")
    certs = Certs(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    ca.cert_pem.write_to_path(str(certs.ca_file))
    with certs.cert_file.open("wb") as f:
        for blob in leaf.cert_chain_pems:
            f.write(blob.bytes())
    leaf.private_key_pem.write_to_path(str(certs.key_file))
    certs.key_file.chmod(0o600)
    return certs


def _q(value: str | Path) -> str:
    """A quoted nginx/TOML string (JSON escaping is valid for both here)."""
    return json.dumps(str(value))


def _nginx_common(prefix: Path, workers: int, connections: int) -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / "temp" / sub).mkdir(parents=True, exist_ok=True)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    nofile = connections * 2 + 1024
    if hard != resource.RLIM_INFINITY:
        nofile = min(nofile, hard)
    return f"""{user}worker_processes {workers};
worker_rlimit_nofile {nofile};
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
events {{
    worker_connections {connections};
}}
"""


def _nginx_http_common(prefix: Path) -> str:
    return f"""    access_log off;
    client_body_temp_path {prefix / "temp" / "client_body"};
    proxy_temp_path {prefix / "temp" / "proxy"};
    fastcgi_temp_path {prefix / "temp" / "fastcgi"};
    uwsgi_temp_path {prefix / "temp" / "uwsgi"};
    scgi_temp_path {prefix / "temp" / "scgi"};
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    server_tokens off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
"""


def backend_nginx_conf(
    prefix: Path, *, port: int, sse_port: int, workers: int, connections: int
) -> Path:
    """The fast origin: /small, /1m and the JSON chat completion served by nginx itself;
    /sse, /idle and the streamed completion proxied unbuffered to the Python SSE server."""
    docroot = prefix / "www"
    docroot.mkdir(parents=True, exist_ok=True)
    (docroot / "1m").write_bytes(os.urandom(ONE_MIB))
    conf = (
        _nginx_common(prefix, workers, connections)
        + "http {\n"
        + _nginx_http_common(prefix)
        + f"""    upstream sse {{
        server 127.0.0.1:{sse_port};
        keepalive 512;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096 reuseport;
        root {docroot};
        location = /small {{
            default_type text/plain;
            return 200 {_q(SMALL_BODY)};
        }}
        location = /1m {{
        }}
        location /sse {{
            proxy_pass http://sse;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 3600s;
        }}
        location /idle {{
            proxy_pass http://sse;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 3600s;
        }}
        location = {CHAT_PATH} {{
            # Without ?events=N, a small JSON completion (test f); with it, a streamed chat
            # completion from the SSE server (test g). ("return" inside "if" ends the
            # request there; a bare "return" would run whatever an "if" matched.)
            default_type application/json;
            if ($arg_events = "") {{
                return 200 {_q(CHAT_RESPONSE)};
            }}
            proxy_pass http://sse;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 3600s;
        }}
        location = {STREAM_PATH} {{
            proxy_pass http://sse;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 3600s;
        }}
    }}
}}
"""
    )
    path = prefix / "nginx.conf"
    path.write_text(conf)
    return path


def proxy_nginx_conf(
    prefix: Path,
    *,
    port: int,
    backend_port: int,
    workers: int,
    connections: int,
    cert_file: Path,
    key_file: Path,
    session_resumption: bool = True,
) -> Path:
    """nginx as the TLS-terminating reference proxy, configured the way one would deploy
    it in front of an LLM server (keep-alive upstream pool, unbuffered streaming)."""
    # nginx's default is session tickets on (keys shared by all workers), no session cache.
    resumption = (
        "ssl_session_tickets on;"
        if session_resumption
        else "ssl_session_tickets off;\n        ssl_session_cache off;"
    )
    conf = (
        _nginx_common(prefix, workers, connections)
        + "http {\n"
        + _nginx_http_common(prefix)
        + f"""    upstream backend {{
        server 127.0.0.1:{backend_port};
        keepalive 256;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }}
    server {{
        listen 127.0.0.1:{port} ssl backlog=4096 reuseport;
        ssl_certificate {cert_file};
        ssl_certificate_key {key_file};
        ssl_protocols TLSv1.2 TLSv1.3;
        {resumption}
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        proxy_read_timeout 3600s;
        location / {{
            proxy_pass http://backend;
        }}
        location /sse {{
            proxy_pass http://backend;
            proxy_buffering off;
        }}
        location /idle {{
            proxy_pass http://backend;
            proxy_buffering off;
        }}
        location = {STREAM_PATH} {{
            proxy_pass http://backend;
            proxy_buffering off;
        }}
        location = {CHAT_PATH} {{
            proxy_pass http://backend;
            proxy_buffering off;
        }}
    }}
}}
"""
    )
    path = prefix / "nginx.conf"
    path.write_text(conf)
    return path


def teeproxy_toml(
    path: Path,
    *,
    state_dir: Path,
    port: int,
    admin_port: int,
    backend_port: int,
    workers: int,
    max_connections: int,
    cert_file: Path,
    key_file: Path,
    receipts: bool | None = None,
) -> Path:
    """teeproxy's config. receipts None: attestation and receipts at their defaults (tests
    a-e); True/False: the simulated attestation provider (a development quote signer: there
    is no TEE here, and receipts need a provider) with [receipts] enabled = that (test f)."""
    text = f"""# Generated by bench/run.py
state_dir = {_q(state_dir)}

[server]
listen = [{_q(f"127.0.0.1:{port}")}]
workers = {workers}
drain_grace = 1.0

[tls]
certificates = [{{ cert_file = {_q(cert_file)}, key_file = {_q(key_file)} }}]

[backend]
url = {_q(f"http://127.0.0.1:{backend_port}")}
# teeproxy's pool_size also caps *concurrent* upstream connections per worker (unlike
# nginx's upstream "keepalive N", which only caps idle ones): raise it so that
# max_connections streams can be open at once, as with nginx.
pool_size = {max_connections}

[admin]
listen = {_q(f"127.0.0.1:{admin_port}")}

[limits]
max_connections = {max_connections}

[logging]
level = "WARNING"
access_log = false
"""
    if receipts is not None:
        text += f"""
[attestation]
# Development quotes (INSECURE): the same in the receipts-on and receipts-off configs, so
# that only signing differs between them.
provider = "simulated"

[receipts]
enabled = {"true" if receipts else "false"}
"""
    path.write_text(text)
    return path
