"""What network traffic the dashboard's Streamlit server makes (docs/dashboard.md, "Network traffic").

Streamlit, bound to an address other than loopback and not told the address users browse
to, asks an outside service (checkip.amazonaws.com) for the machine's external IP when it
starts, to print a URL. ``automl-vision dashboard`` passes that address
(``browser.serverAddress``) so it does not. Checked here with the options parsed by
Streamlit's own command line and run through its own start-up code, with its HTTP helper
replaced by one that records the call: nothing leaves this machine.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

pytest.importorskip("streamlit")

from automl_vision.commands.dashboard import browser_address, streamlit_options  # noqa: E402

PROBE = r"""
import json, sys
from streamlit import net_util
from streamlit.web import bootstrap, cli
from streamlit.web.server import server_util

calls = []
net_util._make_blocking_http_get = lambda url, timeout=5: calls.append(url)  # record, never connect
options = json.loads(sys.argv[1])
ctx = cli.main_run.make_context("run", ["app.py", *options])  # parsed as `streamlit run` parses them
bootstrap.load_config_options(flag_options={k: v for k, v in ctx.params.items() if k not in ("target", "args")})
bootstrap._print_url(False)  # the start-up banner
# a browser on another machine, at the address the dashboard gave Streamlit
assert server_util.is_url_from_allowed_origins(sys.argv[2])
print("CALLS=" + json.dumps(calls))
"""


def outside_calls(options: list[str], origin: str = "http://127.0.0.1:8765") -> tuple[list[str], str]:
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(options), origin], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("CALLS="))
    return json.loads(line[6:]), proc.stdout


def test_options_name_the_address_and_turn_off_usage_statistics():
    opts = dict(zip(*[iter(streamlit_options("0.0.0.0", 8765))] * 2))
    assert opts["--server.address"] == "0.0.0.0"
    assert opts["--browser.serverAddress"] == socket.gethostname() == browser_address("::")
    assert opts["--browser.serverPort"] == "8765"
    assert opts["--browser.gatherUsageStats"] == "false" and opts["--server.headless"] == "true"
    assert dict(zip(*[iter(streamlit_options("10.1.2.3", 80))] * 2))["--browser.serverAddress"] == "10.1.2.3"
    assert browser_address("fd00::5") == "[fd00::5]"  # an IPv6 address, as a URL names it


@pytest.mark.parametrize("host", ["0.0.0.0", "127.0.0.1"])
def test_streamlit_makes_no_outside_call_with_the_dashboards_options(host):
    calls, banner = outside_calls(streamlit_options(host, 8765), f"http://{browser_address(host)}:8765")
    assert calls == []
    assert f"http://{browser_address(host)}:8765" in banner


def test_without_the_address_streamlit_would_call_out():
    """The check above can fail: Streamlit's defaults do ask checkip.amazonaws.com."""
    opts = [x for pair in zip(*[iter(streamlit_options("0.0.0.0", 8765))] * 2)
            if not pair[0].startswith("--browser.server") for x in pair]
    calls, _ = outside_calls(opts)
    assert any("checkip.amazonaws.com" in c for c in calls)


def test_a_websocket_from_another_origin_is_refused_without_asking_anyone():
    """Streamlit asks checkip.amazonaws.com when a page of another origin connects, whatever the
    options; the dashboard's launcher (automl_vision.dashboard.serve) answers for it."""
    probe = PROBE.replace("assert server_util.is_url_from_allowed_origins(sys.argv[2])",
                          "from automl_vision.dashboard.serve import no_outside_calls\n"
                          "no_outside_calls()\n"
                          "assert not server_util.is_url_from_allowed_origins('http://elsewhere.example:8080')\n"
                          "assert server_util.is_url_from_allowed_origins(sys.argv[2])")
    proc = subprocess.run([sys.executable, "-c", probe, json.dumps(streamlit_options("0.0.0.0", 8765)),
                           f"http://{browser_address('0.0.0.0')}:8765"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("CALLS="))[6:]) == []
    # and without the launcher, the same connection does make the call
    bare = PROBE.replace("assert server_util.is_url_from_allowed_origins(sys.argv[2])",
                         "server_util.is_url_from_allowed_origins('http://elsewhere.example:8080')")
    proc = subprocess.run([sys.executable, "-c", bare, json.dumps(streamlit_options("0.0.0.0", 8765)), "x"],
                          capture_output=True, text=True, timeout=120)
    calls = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("CALLS="))[6:])
    assert any("checkip.amazonaws.com" in c for c in calls)
