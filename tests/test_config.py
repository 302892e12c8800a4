"""Flags, environment variables and their errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.config import (
    README_TABLES,
    ConfigError,
    ProbeSettings,
    Settings,
    parse_duration,
    parse_listen_address,
    parse_settings,
    readme_table,
)
from exporter.options import flags


@pytest.mark.parametrize(
    "text,seconds",
    [
        ("500ms", 0.5),
        ("1s", 1.0),
        ("1m", 60.0),
        ("1m30s", 90.0),
        ("250us", 250e-6),
        ("1.5s", 1.5),
        ("2h", 7200.0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "00", "s", "1x", "-1s", "1s2", "ms1"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_full_size_probes_default_on_and_turn_off_with_zero() -> None:
    p = parse_settings([], environ={}).probe
    assert (p.mtu_interval, p.mtu) == (10.0, None)
    off = parse_settings(["--probe.mtu-interval=0"], environ={"PINGMESH_PROBE_MTU": "9000"})
    assert (off.probe.mtu_interval, off.probe.mtu) == (0.0, 9000)
    assert parse_duration("0") == 0.0


@pytest.mark.parametrize(
    "text,expected",
    [
        (":9871", ("", 9871)),
        ("127.0.0.1:80", ("127.0.0.1", 80)),
        ("[::1]:9871", ("::1", 9871)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_listen_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(text) == expected


@pytest.mark.parametrize("text", ["9871", "::1:9871", "host:port", "[::1]9871", ":99999"])
def test_bad_listen_addresses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_listen_address(text)


def test_defaults() -> None:
    s = parse_settings([], environ={})
    assert s.probe.interval == 1.0 and s.probe.timeout == 1.0
    assert s.web.listen_address == ":9871" and s.web.telemetry_path == "/metrics"
    assert s.static.targets == () and s.probe.socket_mode == "auto"


def test_flags_and_environment() -> None:
    env = {
        "PINGMESH_PROBE_INTERVAL": "250ms",
        "PINGMESH_TARGET": "198.18.0.1, 198.18.0.2",
        "PINGMESH_PROBE_TIMEOUT": "2s",
    }
    s = parse_settings(["--probe.timeout", "500ms", "--target", "2001:db8::1"], environ=env)
    assert s.probe.interval == 0.25
    assert s.probe.timeout == 0.5  # the flag wins over the environment
    assert s.static.targets == ("2001:db8::1",)
    s = parse_settings([], environ=env)
    assert s.static.targets == ("198.18.0.1", "198.18.0.2")


def test_startup_denial_timeout() -> None:
    assert parse_settings([], environ={}).kubernetes.startup_denial_timeout == 60.0
    env = {"PINGMESH_KUBERNETES_STARTUP_DENIAL_TIMEOUT": "90s"}
    assert parse_settings([], environ=env).kubernetes.startup_denial_timeout == 90.0
    s = parse_settings(["--kubernetes.startup-denial-timeout", "0s"], environ=env)
    assert s.kubernetes.startup_denial_timeout == 0.0  # the flag wins; 0: fatal at once
    with pytest.raises(ConfigError, match="PINGMESH_KUBERNETES_STARTUP_DENIAL_TIMEOUT"):
        parse_settings([], environ={"PINGMESH_KUBERNETES_STARTUP_DENIAL_TIMEOUT": "soon"})


def test_bad_environment_names_variable_and_flag() -> None:
    with pytest.raises(ConfigError, match=r"PINGMESH_PROBE_PAYLOAD_SIZE .*--probe.payload-size"):
        parse_settings([], environ={"PINGMESH_PROBE_PAYLOAD_SIZE": "huge"})


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["--probe.interval", "fast"], "--probe.interval"),
        (["--probe.interval", "1ms"], "--probe.interval"),
        (["--probe.payload-size", "4"], "--probe.payload-size"),
        (["--probe.ttl", "0"], "--probe.ttl"),
        (["--probe.socket", "tcp"], "--probe.socket"),
        (["--web.listen-address", "nope"], "--web.listen-address"),
        (["--web.telemetry-path", "metrics"], "--web.telemetry-path"),
        (["--log.format", "xml"], "--log.format"),
        (["--mesh.source-network", "node"], "--mesh.source-network"),
        (["--kubernetes.startup-denial-timeout", "1"], "--kubernetes.startup-denial-timeout"),
        (["--probe.mtu-interval", "5ms"], "--probe.mtu-interval"),
        (["--probe.mtu-interval", "-1s"], "--probe.mtu-interval"),
        (["--probe.mtu", "67"], "--probe.mtu"),
        (["--probe.mtu", "65536"], "--probe.mtu"),
        (["--no-such-flag"], "--no-such-flag"),
        (["--probe.flows", "0"], "--probe.flows"),
        (["--probe.tcp", "sometimes"], "--probe.tcp"),
        (["--probe.tcp-port", "70000"], "--probe.tcp-port"),
    ],
)
def test_bad_flag_exits_2_naming_it(argv: list[str], flag: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "exporter", *argv], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2
    assert flag in proc.stderr


def test_version_and_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "exporter", "--version"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0 and "pingmesh-exporter" in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "exporter", "--help"], capture_output=True, text=True, timeout=30
    )
    assert "PINGMESH_PROBE_INTERVAL" in out.stdout


def test_readme_flag_tables_are_the_generated_ones() -> None:
    """README's flag tables come from the settings declarations; with
    PINGMESH_UPDATE_README=1 this test rewrites them instead of failing."""
    readme = Path(__file__).resolve().parent.parent / "README.md"
    text = readme.read_text()
    pattern = re.compile(r"(<!-- flags:(\w+):[^\n]*-->\n)(.*?)(<!-- /flags -->)", re.S)
    found = {m.group(2) for m in pattern.finditer(text)}
    assert found == set(README_TABLES)
    fresh = pattern.sub(lambda m: m.group(1) + readme_table(m.group(2)) + m.group(4), text)
    if os.environ.get("PINGMESH_UPDATE_README") == "1":
        readme.write_text(fresh)
    assert text == fresh, "README's flag tables are stale: PINGMESH_UPDATE_README=1 rewrites them"


def test_every_field_is_declared_once_with_its_flag() -> None:
    seen = [f.name for f in flags(Settings)]
    assert len(seen) == len(set(seen))
    by_name = {f.name: f for f in flags(Settings)}
    assert by_name["--probe.socket"].dest == "probe.socket_mode"
    assert by_name["--probe.interval"].env == "PINGMESH_PROBE_INTERVAL"
    assert by_name["--probe.interval"].kind.unit == "seconds"
    by_name["--log.level"].kind.check("warn")  # raises ValueError when not a choice
    # Every duration is in seconds; every number says what it counts.
    for f in flags(Settings):
        if isinstance(f.default, float):
            assert f.kind.unit == "seconds", f.name


def test_groups_check_values_built_in_code() -> None:
    with pytest.raises(ValueError, match="interval"):
        ProbeSettings(interval=0.001)
    with pytest.raises(ValueError, match="socket_mode"):
        ProbeSettings(socket_mode="tcp")  # type: ignore[arg-type]


def test_lists_take_commas_and_repetition() -> None:
    s = parse_settings(["--target", "198.18.0.1,198.18.0.2", "--target", "198.18.0.3"], {})
    assert s.static.targets == ("198.18.0.1", "198.18.0.2", "198.18.0.3")
    s = parse_settings([], {"POD_IPS": "198.18.0.1 2001:db8::1"})
    assert s.kubernetes.pod_ips == ("198.18.0.1", "2001:db8::1")
