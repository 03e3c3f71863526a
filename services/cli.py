"""The `exchange` command: one subcommand per process, used locally and in the image."""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, help); each module has `main(argv) -> int`.
COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("services.local.up", "run the whole exchange on this machine"),
    "redis": ("services.local.redis_cluster", "run a local Redis Cluster"),
    "api": ("services.api.main", "the REST API and web page"),
    "engine": ("services.engine.main", "the matching engine of one pair (--pair P)"),
    "gateway": ("services.gateway.server", "a WebSocket market-data gateway"),
    "settlement": ("services.settlement.main", "settle engine events on accounts"),
    "simulate": ("services.simulator.main", "a simulated market trading over the API"),
    "trace": ("services.common.trace_view",
              "an order's trace as a tree with timings (ORDER_ID, or --slowest N)"),
    "audit": ("services.engine.audit",
              "export or verify a pair's audit log by replay (export|verify PAIR)"),
}


def usage() -> str:
    lines = ["usage: exchange COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<11} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(usage(), file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
