"""The command line a newcomer meets: `derlink ctl` finds a running server's head-end from its data
directory or its configuration file with nothing exported, takes its options before or after the action,
and a port in use or a missing file is reported in one line (no traceback). Real server processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from certs.pki import init_pki

ENV = {k: v for k, v in os.environ.items() if k not in ("DERLINK_HEADEND_URL", "DERLINK_TOKEN")}


def derlink(*args: str | Path, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "derlink", *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Path]:
    """`derlink server run` on free ports, its data directory (with PKI) in tmp_path/data."""
    data = tmp_path / "data"
    init_pki(data / "pki")
    process = subprocess.Popen(
        [sys.executable, "-m", "derlink", "server", "run", "--data-dir", data, "--port", "0",
         "--admin-port", "0", "--headend-port", "0"],
        cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("derlink server:"), line + (process.stderr.read() if process.stderr else "")
    try:
        yield data
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


def test_ctl_finds_the_headend_from_the_data_dir_with_options_anywhere(server: Path, tmp_path: Path) -> None:
    recorded = json.loads((server / "headend.json").read_text())
    assert recorded["url"].startswith("http://127.0.0.1:") and not recorded["url"].endswith(":8445")

    # Options after the object and the action, as well as before; nothing exported.
    created = derlink("ctl", "groups", "create", "feeder-7", "--data-dir", server, "--json", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["name"] == "feeder-7"
    listed = derlink("ctl", "--data-dir", server, "groups", "list", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "feeder-7" in [g["name"] for g in json.loads(listed.stdout)["items"]]
    # Options between the object and the action.
    audit = derlink("ctl", "audit", "--action", "group.create", "--json", "--data-dir", server, cwd=tmp_path)
    assert audit.returncode == 0 and "feeder-7" in audit.stdout

    # The server's configuration file is enough too: it names the data directory.
    config = tmp_path / "server.toml"
    config.write_text(f'[server]\ndata_dir = "{server}"\n')
    whoami = derlink("ctl", "whoami", "--config", config, "--json", cwd=tmp_path)
    assert whoami.returncode == 0, whoami.stderr
    assert json.loads(whoami.stdout)["role"] == "operator"

    # A missing upload file: one line naming it, nothing sent.
    missing = derlink("ctl", "does", "upload", tmp_path / "day-ahead.csv", "--data-dir", server, cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [f"error: {tmp_path / 'day-ahead.csv'}: no such file"]


def test_ctl_uses_the_configured_token_and_address(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = tmp_path / "server.toml"
    config.write_text(
        f'[server]\nheadend_port = {port}\n'
        'headend_tokens = [{name = "bob", token = "viewer-token-0123456789", role = "viewer"},'
        ' {name = "alice", token = "operator-token-0123456789", role = "operator"}]\n'
    )
    result = derlink("ctl", "groups", "list", "--config", config, cwd=tmp_path)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot reach the head-end API at http://127.0.0.1:{port} ")


def test_server_port_in_use_and_missing_files_are_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    init_pki(data / "pki")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = derlink("server", "run", "--data-dir", data, "--port", port, "--admin-port", "0",
                         "--headend-port", "0", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: the port is already in use (choose another with "
        "--port, --admin-port or --headend-port)"
    ]

    missing = derlink("server", "run", "--config", tmp_path / "nope.toml", cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [f"error: configuration file {tmp_path / 'nope.toml'} "
                                                   "does not exist"]
    no_pki = derlink("server", "run", "--data-dir", tmp_path / "empty", "--port", "0", cwd=tmp_path)
    assert no_pki.returncode == 2 and len(no_pki.stderr.strip().splitlines()) == 1
    assert "derlink certs init" in no_pki.stderr
