"""``automl-vision dashboard RUN_DIR``: the Streamlit dashboard over a run directory or a study."""

from __future__ import annotations

import argparse
import ipaddress

from automl_vision.commands import add_plugin_option, plugins_into_env

HELP = "open the dashboard (leaderboard, search insight, ensemble, errors and Grad-CAM) of a run directory or study"

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is between 1 and 65535, got {value}")
    return value


def add_parser(sub) -> None:
    p = sub.add_parser(
        "dashboard", help=HELP,
        description=HELP + ". It only reads the run directory and the Optuna storage, so it can watch a search "
        "while it runs. Binds 127.0.0.1 unless --host says otherwise.",
        epilog="Examples: automl-vision dashboard runs/digits | automl-vision dashboard runs/a runs/b (compare) | "
               "automl-vision dashboard --storage postgresql://user@db/automl --study-name digits",
    )
    p.add_argument("runs", nargs="*", metavar="RUN_DIR",
                   help="run directory written by 'automl-vision search --out'; give several to compare them")
    p.add_argument("--storage", metavar="URL",
                   help="Optuna storage URL of the study (postgresql://..., sqlite:///..., or a .journal file; "
                        "without a RUN_DIR, default: $AUTOML_VISION_STORAGE); with a RUN_DIR it is that run's study")
    p.add_argument("--study-name", metavar="NAME", help="study name in --storage (default: the run's)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default: 127.0.0.1, this machine only). Another address, e.g. 0.0.0.0, "
                        "lets anyone who can reach it see the run, its images and file paths: the dashboard has no login")
    p.add_argument("--port", type=_port, default=8501, help="port (default: 8501)")
    add_plugin_option(p)
    p.add_argument("--refresh", type=float, default=5.0, metavar="SECONDS",
                   help="auto-refresh interval while a search runs (default: 5)")
    p.set_defaults(func=run)


def _check_port(host: str, port: int) -> None:
    import socket

    from automl_vision.types import UsageError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UsageError(f"--host {host!r}: not an address of this machine ({exc})") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # as the server itself does: a port left in TIME_WAIT by a dashboard just stopped is free
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as exc:
            raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror}); is another dashboard running there? "
                             "Pass --port with a free port.") from None


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def browser_address(host: str) -> str:
    """The address users browse to: the bound address, or this machine's name for a wildcard.

    Streamlit is always given it (``browser.serverAddress``): without it, a server bound to
    another address than loopback asks an outside service (checkip.amazonaws.com) for the
    machine's external IP when it starts, to print a URL.
    """
    import socket

    if host in ("0.0.0.0", "::", ""):
        return socket.gethostname()  # local: no DNS query
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def streamlit_options(host: str, port: int) -> list[str]:
    """The options the Streamlit server runs with: bound where asked, headless, no outside calls.

    docs/dashboard.md ("Network traffic") says what each one avoids.
    """
    return [
        "--server.address", host,
        "--server.port", str(port),
        "--server.headless", "true",  # opens no browser, and prompts for no e-mail
        "--server.fileWatcherType", "none",
        "--server.runOnSave", "false",
        "--server.maxUploadSize", "20",
        "--browser.serverAddress", browser_address(host),
        "--browser.serverPort", str(port),
        "--browser.gatherUsageStats", "false",  # no usage statistics from the browser
        "--global.developmentMode", "false",
        "--client.toolbarMode", "viewer",
    ]


def run(args: argparse.Namespace) -> int:
    import os
    import sys
    from pathlib import Path

    from automl_vision.rundir import RUN_JSON, TRIALS
    from automl_vision.types import UsageError

    if not args.runs and not args.storage:  # a study alone: its storage may come from the environment
        args.storage = os.environ.get("AUTOML_VISION_STORAGE") or None
    if not args.runs and not args.storage:
        raise UsageError("give a run directory (automl-vision dashboard runs/NAME) or --storage URL --study-name NAME")
    if args.storage and not args.study_name and not args.runs:
        raise UsageError("--storage needs --study-name NAME (or a RUN_DIR whose run.json names the study)")
    runs = []
    for r in args.runs:
        path = Path(r).expanduser().resolve()
        if not path.is_dir():
            raise UsageError(f"{r}: no such run directory; give the directory that 'automl-vision search --out' wrote")
        if not (path / RUN_JSON).is_file() and not (path / TRIALS).is_dir():
            print(f"note: {r} has no run.json yet; the dashboard shows it once a search writes there", file=sys.stderr)
        runs.append(str(path))
    if args.refresh < 1:
        raise UsageError(f"--refresh {args.refresh}: give at least 1 second")
    try:
        import streamlit  # noqa: F401
    except ImportError:
        raise UsageError("the dashboard needs Streamlit: pip install streamlit") from None
    _check_port(args.host, args.port)

    from automl_vision.dashboard import APP
    from automl_vision.dashboard.data import ENV_REFRESH, ENV_RUNS, ENV_STORAGE, ENV_STUDY

    app = APP.resolve()
    if not app.is_file():
        raise UsageError(f"the dashboard app is missing from the installation ({app}); reinstall automl-vision")
    env = dict(os.environ)
    env[ENV_RUNS] = os.pathsep.join(runs)
    env[ENV_REFRESH] = str(args.refresh)
    # the storage URL may hold a password: it goes through the environment, not the process list
    if args.plugin:  # the model families Grad-CAM and the error gallery rebuild trials with
        plugins_into_env(env, args.plugin)
    for key, value in ((ENV_STORAGE, args.storage), (ENV_STUDY, args.study_name)):
        if value:
            env[key] = value
        else:
            env.pop(key, None)
    # Streamlit's own `streamlit run`, with its one call to an outside service answered here (dashboard/serve.py)
    cmd = [sys.executable, "-m", "automl_vision.dashboard.serve", "run", str(app), *streamlit_options(args.host, args.port)]
    shown = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else shown}:{args.port}"
    print(f"automl-vision dashboard: {url}  (Ctrl-C to stop)", flush=True)
    if args.host in ("0.0.0.0", "::"):
        print(f"from other machines: http://{browser_address(args.host)}:{args.port}", flush=True)
    if not _is_loopback(args.host):
        print(f"warning: listening on {args.host}: anyone who can reach this address sees the run, its images and "
              "file paths, and can run Grad-CAM on this machine; the dashboard has no login.", file=sys.stderr, flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    # become the Streamlit server: Ctrl-C and a service manager's SIGTERM reach it directly,
    # and no server is left behind when this process is stopped
    os.execve(sys.executable, cmd, env)
    return 0  # pragma: no cover (execve does not return)
