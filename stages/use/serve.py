"""``python -m pipeline serve``: the local web page (stages/use/webapp.py) on a trained experiment."""
from __future__ import annotations

from pipeline.registry import Command
from stages.use.trained import UseError, check_use_args


def _serve_arguments(p) -> None:
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: this machine only; the page has no login, so any other "
                        "address lets whoever reaches it use this machine)")
    p.add_argument("--port", type=int, default=7860, help="port 0..65535 (0: a free one; default %(default)s)")
    p.add_argument("--steps", type=int, default=200, help="default projection steps on the page (default %(default)s)")


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def run_serve(reg, cfg, args) -> int:
    import socket
    import sys

    from werkzeug.serving import make_server

    from stages.use.webapp import STEPS_RANGE, create_app

    try:
        check_use_args(args, "serve")
        if not 0 <= args.port <= 65535:
            raise UseError(f"--port {args.port}: expected 0..65535 (0: a free one)")
        if not STEPS_RANGE[0] <= args.steps <= STEPS_RANGE[1]:
            raise UseError(f"--steps {args.steps}: expected {STEPS_RANGE[0]}..{STEPS_RANGE[1]}")
        app = create_app(cfg, steps=args.steps)
    except UseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        server = make_server(args.host, args.port, app, threaded=True)
    except (OSError, socket.error, OverflowError) as e:
        print(f"error: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 2
    if not _is_loopback(args.host):
        print(f"warning: --host {args.host}: this page has no authentication, and it is now reachable from the "
              f"network: anyone who can reach port {server.port} can upload photos, run projections on this machine "
              "and see the results; keep the default 127.0.0.1 and use an SSH tunnel to reach it from elsewhere",
              file=sys.stderr, flush=True)
    print(f"serving experiment {cfg.experiment!r} on http://{args.host}:{server.port}/ (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


COMMANDS = [
    Command("serve", "A local web page: cartoonize an uploaded photo, and generate with SeFa sliders.",
            _serve_arguments, run_serve),
]
