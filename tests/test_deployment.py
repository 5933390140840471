"""docs/deployment.md as run: its nginx block (TLS with a self-signed
certificate) in front of two instances sharing Redis, the board loading in
Chromium through it, a kiosk client verifying the certificate with ca_file;
the systemd unit verified; the Kubernetes example parsed."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from lockerbus.client import ClientOptions, KioskClient
from tests.browser_support import CHROMIUM, CHROMIUM_ARGS
from tests.conftest import require, require_binary
from tests.processes import ServerProcess
from tests.redis_support import RedisServer
from tests.support import free_port, locker_event, post_event

ROOT = Path(__file__).resolve().parent.parent
DEPLOYMENT = ROOT / "docs" / "deployment.md"
NGINX = "/usr/sbin/nginx"


def doc_block(language: str, after: str) -> str:
    """The first fenced ``language`` block of docs/deployment.md after the heading ``after``."""
    text = DEPLOYMENT.read_text()
    section = text[text.index(after) :]
    match = re.search(rf"```{language}\n(.*?)```", section, re.S)
    assert match, f"no {language} block after {after!r}"
    return match.group(1)


def self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            require_binary("openssl"),
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=localhost",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key


def nginx_conf(directory: Path, port: int, upstreams: list[int], cert: Path, key: Path) -> Path:
    """The documented block with this test's addresses, inside a minimal nginx.conf."""
    block = doc_block("nginx", "## TLS with nginx")
    servers = "".join(f"    server 127.0.0.1:{p};\n" for p in upstreams)
    block = re.sub(r"(    server 10\.0\.0\.\d+:8080;\n)+", servers, block)
    block = block.replace("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
    block = block.replace("/etc/ssl/lockerbus/fullchain.pem", str(cert))
    block = block.replace("/etc/ssl/lockerbus/privkey.pem", str(key))
    assert str(cert) in block and f"127.0.0.1:{upstreams[1]}" in block
    temp = directory / "temp"
    temp.mkdir()
    conf = directory / "nginx.conf"
    user = "user root root;\n" if os.geteuid() == 0 else ""
    conf.write_text(
        f"{user}daemon off;\nworker_processes 1;\npid {directory}/nginx.pid;\n"
        f"error_log {directory}/error.log info;\nevents {{ worker_connections 256; }}\n"
        f"http {{\n  access_log {directory}/access.log;\n"
        f"  client_body_temp_path {temp}/body;\n  proxy_temp_path {temp}/proxy;\n"
        f"  fastcgi_temp_path {temp}/fcgi;\n  uwsgi_temp_path {temp}/uwsgi;\n"
        f"  scgi_temp_path {temp}/scgi;\n{block}}}\n"
    )
    return conf


@pytest.fixture
async def behind_nginx(tmp_path: Path, redis_server: RedisServer):  # type: ignore[no-untyped-def]
    """Two instances sharing Redis behind the documented nginx; yields (url, cert, instances)."""
    require(os.access(NGINX, os.X_OK), NGINX)
    env = {"LOCKERBUS_MESSAGE_QUEUE": redis_server.url}
    instances = [
        ServerProcess(store=redis_server.url, log_path=tmp_path / f"lockerbus-{i}.log", env=env)
        for i in range(2)
    ]
    await asyncio.gather(*(p.started() for p in instances))
    cert, key = self_signed(tmp_path)
    port = free_port()
    conf = nginx_conf(tmp_path, port, [p.port for p in instances], cert, key)
    check = await asyncio.create_subprocess_exec(
        NGINX, "-t", "-c", str(conf), stderr=asyncio.subprocess.PIPE
    )
    _, problems = await check.communicate()
    assert check.returncode == 0, problems.decode()
    nginx = await asyncio.create_subprocess_exec(NGINX, "-c", str(conf))
    try:
        await wait_listening(port, nginx)
        yield f"https://127.0.0.1:{port}", cert, instances
    finally:
        nginx.terminate()
        await asyncio.wait_for(nginx.wait(), 30)
        await asyncio.gather(*(p.stopped() for p in instances))


async def wait_listening(port: int, process: asyncio.subprocess.Process) -> None:
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            assert process.returncode is None, "nginx exited"
            await asyncio.sleep(0.05)  # nginx gives no readiness signal to await
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise AssertionError(f"nginx never listened on {port}")


pytestmark = [pytest.mark.needs_redis, pytest.mark.needs_chromium, pytest.mark.slow]


async def test_board_loads_through_nginx_with_tls(behind_nginx: Any, http: Any) -> None:
    url, _cert, instances = behind_nginx
    require(os.access(CHROMIUM, os.X_OK), CHROMIUM)
    from playwright.async_api import async_playwright

    first, second = instances
    status, _ = await post_event(first, http, locker_event(1))
    assert status == 201
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(ignore_https_errors=True)
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            await page.goto(f"{url}/board#token={first.token('panel', 'board-1')}")
            await page.wait_for_selector('#status[data-status="connected"]', timeout=15_000)
            await page.wait_for_selector('#mode[data-mode="live"]', timeout=15_000)
            selector = '[data-locker="kiosk-1/L1"][data-state="closed"]'
            await page.wait_for_selector(selector, timeout=5_000)
            # published on either instance, shown through the proxy
            for n, instance in ((2, first), (3, second)):
                status, event = await post_event(instance, http, locker_event(n))
                assert status == 201
                await page.wait_for_selector(
                    f'#feed li[data-ns="/ws/lockers"][data-seq="{event["seq"]}"]', timeout=10_000
                )
            assert errors == []
        finally:
            await browser.close()


async def test_kiosk_client_verifies_the_proxy_with_a_ca_file(behind_nginx: Any) -> None:
    url, cert, instances = behind_nginx
    options = ClientOptions(reconnect_first_delay=0.3, ca_file=str(cert))
    token = instances[0].token("kiosk", "kiosk-9")
    async with KioskClient(url, token, "kiosk-9", options=options) as kiosk:
        await asyncio.wait_for(kiosk.wait_live(), 20)
        event = await kiosk.report_status("online", 99.0)
    assert event is not None and event["data"]["status"] == "online"


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = require_binary("systemd-analyze")
    unit = tmp_path / "lockerbus.service"
    text = doc_block("ini", "## systemd")
    # the unit's programs must exist for verify: point them at this install
    lockerbus = str(Path(sys.executable).with_name("lockerbus"))
    unit.write_text(text.replace("/opt/lockerbus/venv/bin/lockerbus", lockerbus))
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )
    # verify exits 0 even for unknown keys or bad values; it names the file in each complaint
    problems = [line for line in (result.stdout + result.stderr).splitlines() if str(unit) in line]
    assert problems == [], result.stdout + result.stderr


def test_kubernetes_example_has_deployment_service_and_probes() -> None:
    documents = list(yaml.safe_load_all((ROOT / "docs/deploy/kubernetes.yaml").read_text()))
    kinds = {doc["kind"]: doc for doc in documents}
    assert set(kinds) == {"Deployment", "Service"}
    deployment, service = kinds["Deployment"], kinds["Service"]
    pod = deployment["spec"]["template"]
    assert (
        deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    )
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] in ports
    # every LOCKERBUS_* variable in it is a real setting
    from lockerbus.config import read_settings

    env = {e["name"]: e.get("value", "x" * 64) for e in container["env"]}
    loaded = read_settings(env=env)
    assert loaded.unknown_env == ()
    assert loaded.settings.metrics_port == ports["metrics"]
    assert container["args"][container["args"].index("--port") + 1] == str(ports["http"])
