"""The `wsuper` command."""
from __future__ import annotations

import argparse
import sys

from . import __version__
from .policy import PolicyError


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="wsuper",
        description="Run untrusted WebAssembly plugins as compartments that hold only "
                    "the capabilities their system file grants.")
    ap.add_argument("--version", action="version", version=f"wsuper {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a system and run it until its programs finish "
                        "(or Ctrl-C / SIGTERM)")
    up.add_argument("system", help="path to system.toml")
    up.add_argument("--socket", help="Unix socket for the external endpoint (default: "
                    "[system] socket, else $XDG_RUNTIME_DIR/wsuper/NAME.sock or "
                    "/tmp/wsuper-UID/NAME.sock)")
    check = sub.add_parser("check", help="validate a system without starting anything")
    check.add_argument("system", help="path to system.toml")
    args = ap.parse_args(argv)

    from . import policy, preflight
    try:
        plan = preflight.prepare(policy.load(args.system))
    except PolicyError as e:
        print(f"wsuper: error: {e}", file=sys.stderr)
        return 2
    if args.command == "check":
        for comp in plan.system.compartments.values():
            grants = ", ".join(f"{g.name}={g.kind}:{g.target}" for g in comp.grants) or "nothing"
            serves = f", serves {comp.exports}" if comp.exports else ""
            print(f"{comp.name}: holds {grants}{serves}")
        return 0

    import trio

    from . import runtime
    return trio.run(runtime.up, plan, args.socket)


if __name__ == "__main__":
    sys.exit(main())
