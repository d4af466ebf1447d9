"""The deployment files in deploy/: the example configurations load with derlink's own loaders and name
every setting, and the systemd units pass `systemd-analyze verify` (where systemd is installed)."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from certs.pki import init_pki, issue_device_certificate
from gateway.config import (
    DeviceSpec,
    DrmSettings,
    LocalApiSettings,
    LoopSettings,
    MqttSettings,
    ServerSettings,
    load_settings,
)
from gateway.core import BlackStartConfig
from server.config import ServerConfig, load_config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def named(text: str, key: str) -> bool:
    """``key = ...`` appears in ``text``, set or commented out."""
    return re.search(rf"^\s*#?\s*{re.escape(key)}\s*=", text, re.MULTILINE) is not None


@pytest.mark.parametrize("name", ["server.toml", "container/server.toml"])
def test_example_server_configs_load(name: str) -> None:
    config = load_config(DEPLOY / name)
    assert config.host == "0.0.0.0" and config.port == 8443 and config.headend_port == 8445
    assert config.data_dir.is_absolute()


def test_example_server_config_names_every_setting() -> None:
    text = (DEPLOY / "server.toml").read_text()
    missing = [name for name in ServerConfig.model_fields if not named(text, name)]
    assert missing == []


def test_example_site_config_loads_and_names_every_setting(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    init_pki(pki)
    device = issue_device_certificate(pki, "gateway")
    tls = tmp_path / "tls"
    tls.mkdir()
    shutil.copy(device.chain_path, tls / "gateway-chain.pem")
    shutil.copy(device.key_path, tls / "gateway.key")
    shutil.copy(pki / "ca-chain.pem", tls / "ca-chain.pem")
    (tmp_path / "local-api-token").write_text("0123456789abcdef0123\n")
    site = tmp_path / "site.toml"
    shutil.copy(DEPLOY / "site.toml", site)

    settings = load_settings(site)
    assert settings.lfdi == device.lfdi
    assert [(d.name, d.role) for d in settings.devices] == [("pv", "pv"), ("battery", "battery"),
                                                            ("meter", "meter")]
    assert settings.device("meter")[0].serial_port == "/dev/ttyUSB0"
    assert settings.installer_limits.export_limit_w == 5000
    assert settings.fallback.comms_loss_limits.export_limit_w == 1500
    assert settings.local_api.token == "0123456789abcdef0123" and settings.local_api.port == 8710
    assert settings.drm.source is None and not settings.mqtt.enabled

    text = site.read_text()
    keys = {"data_dir", "lfdi", "cert", "key", "ca", "token_file", "gpio_pins", "connect",
            "export_limit_w", "import_limit_w", "generation_limit_w", "load_limit_w",
            "comms_timeout_s", "persistent_loss_s"}
    for kind in (ServerSettings, DeviceSpec, LoopSettings, LocalApiSettings, MqttSettings, DrmSettings,
                 BlackStartConfig):
        keys |= {f.name for f in dataclasses.fields(kind)}
    assert sorted(k for k in keys if not named(text, k)) == []


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("unit", ["derlink-server.service", "derlink-gateway.service"])
def test_systemd_units_verify(unit: str, tmp_path: Path) -> None:
    # The units start /opt/derlink/bin/derlink; verify checks that the command exists, so point it at ours.
    text = (DEPLOY / "systemd" / unit).read_text()
    assert "/opt/derlink/bin/derlink " in text
    ours = str(Path(sys.prefix) / "bin" / "derlink")
    (tmp_path / unit).write_text(text.replace("/opt/derlink/bin/derlink", ours))
    verify = subprocess.run(["systemd-analyze", "verify", tmp_path / unit], capture_output=True, text=True)
    # Unknown keys and bad values are only warnings on stderr: none is allowed.
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr
    for key in ("User=derlink", "StateDirectory=", "Restart=", "NoNewPrivileges=yes", "ProtectSystem=strict"):
        assert key in text
    security = subprocess.run(["systemd-analyze", "security", "--offline=yes", tmp_path / unit],
                              capture_output=True, text=True)
    exposure = re.search(r"Overall exposure level for \S+: ([\d.]+)", security.stdout + security.stderr)
    assert exposure is not None and float(exposure.group(1)) <= 2.0, security.stdout[-2000:]
