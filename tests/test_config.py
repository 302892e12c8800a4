"""Flags, environment variables and their errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from exporter.config import (
    ConfigError,
    parse_duration,
    parse_listen_address,
    parse_settings,
)


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


@pytest.mark.parametrize("text", ["", "1", "s", "1x", "-1s", "1s2", "ms1"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


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
        (["--kubernetes.startup-denial-timeout", "1"], "--kubernetes.startup-denial-timeout"),
        (["--no-such-flag"], "--no-such-flag"),
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
