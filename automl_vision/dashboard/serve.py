"""``python -m automl_vision.dashboard.serve run APP [OPTIONS]``: Streamlit's own ``streamlit run``,
with no call to an outside service.

Streamlit asks ``checkip.amazonaws.com`` for this machine's external address in two places: to
print an "External URL" when it starts headless on an address other than loopback (the
dashboard's options already avoid that: ``browser.serverAddress``), and when a WebSocket
arrives from a page of another origin, to see whether that origin is this machine (no option
turns that off). The dashboard promises traffic only to the browser and the study's database
(docs/dashboard.md, "Network traffic"), so here the one Streamlit function that makes the
call answers "unknown", as it does on a machine without internet access: a page of another
origin is then refused without asking anyone. Everything else is Streamlit's own command
line. (Patching a library function is the only way in: Streamlit has no setting for it.)
"""

from __future__ import annotations


def no_outside_calls() -> None:
    """Make Streamlit treat the machine's external address as unknown, without a request."""
    from streamlit import net_util

    net_util.get_external_ip = lambda: None


def main() -> None:
    no_outside_calls()
    from streamlit.web import cli

    cli.main(prog_name="streamlit")  # click: parses sys.argv[1:] and exits with the server's status


if __name__ == "__main__":
    main()
