"""`exchange up`: the whole exchange on one machine, as separate processes.

A local Redis Cluster (or the one REDIS_URL names), an engine process per pair plus a
standby waiting on the pair's lease, settlement, the API with the web page, gateway
replicas sharing one port, a simulated market, and Prometheus scraping them all with the
alert rules of observability/ (if `prometheus` is installed). Ctrl-C (SIGINT) or SIGTERM
stops every child cleanly. What was started is written to `.exchange/endpoints.json`.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from services.common.pairs import load_markets
from services.common.secrets_box import SECRETS_KEY_ENV, new_key
from services.common.tracing import TRACE_DIR_ENV
from services.local.redis_cluster import ClusterSpec, LocalRedisCluster, free_ports, port_free

# Dashboards and alert rules, beside the services in a checkout.
OBSERVABILITY = Path(__file__).resolve().parents[2] / "observability"


@dataclass(frozen=True)
class UpOptions:
    data_dir: Path = Path(".exchange")
    host: str = "127.0.0.1"
    api_port: int = 8000
    ws_port: int = 8001
    gateways: int = 2
    standbys: int = 1  # extra engine processes per pair, waiting on the pair's lease
    # Distinct gateway ports instead of one shared port (tests address each replica).
    gateway_ports: tuple[int, ...] = ()
    redis_url: str | None = None  # an existing cluster or single node
    redis_base_port: int = 7000
    masters: int = 3
    replicas: int = 1
    admin_token: str = ""
    simulate_rate: float = 20.0  # 0 = no simulated market
    pairs_file: str | None = None
    log_dir: Path | None = None  # children's output; None = inherit the terminal
    # Prometheus scraping every service with observability/'s alert rules, when the
    # `prometheus` binary is installed; 0 = don't start it.
    prometheus_port: int = 0


def _exchange_command() -> list[str]:
    """The installed `exchange` script, so `ps` shows e.g. `exchange engine --pair BTC-USD`."""
    script = Path(sys.executable).with_name("exchange")
    return [str(script)] if script.exists() else [sys.executable, "-m", "services.cli"]


def _die_with_parent() -> None:
    """Children get SIGTERM if the supervisor dies without stopping them (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen | None = None
    restarts: int = 0
    job: str = ""  # its Prometheus scrape job, if it serves /metrics
    metrics: str = ""  # host:port of its /metrics
    log: Path | None = None  # its output, if not the exchange's log dir or terminal


@dataclass
class LocalExchange:
    options: UpOptions
    cluster: LocalRedisCluster | None = None
    redis_url: str = ""
    children: list[Child] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def api_url(self) -> str:
        return f"http://{self.options.host}:{self.options.api_port}"

    @property
    def ws_urls(self) -> list[str]:
        ports = self.options.gateway_ports or (self.options.ws_port,)
        return [f"ws://{self.options.host}:{port}/ws" for port in ports]

    # ---- start ------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        opts = self.options
        opts.data_dir.mkdir(parents=True, exist_ok=True)
        self.redis_url = opts.redis_url or self._start_cluster(timeout)
        markets = load_markets(opts.pairs_file)
        exe = _exchange_command()
        host = opts.host
        gateways = len(opts.gateway_ports) or opts.gateways
        metric_ports = iter(free_ports(len(markets.pairs) * (1 + opts.standbys) + 1 + gateways))

        def serving_metrics(name: str, job: str, argv: list[str]) -> Child:
            port = next(metric_ports)
            return Child(name, [*argv, "--metrics-port", str(port)], job=job,
                         metrics=f"{host}:{port}")

        for symbol in markets.pairs:
            # Identical processes: whichever takes the pair's lease leads, the rest wait.
            for n in range(1 + opts.standbys):
                self.children.append(serving_metrics(f"engine[{symbol}]#{n + 1}",
                                                     "exchange-engine",
                                                     [*exe, "engine", "--pair", symbol]))
        self.children.append(serving_metrics("settlement", "exchange-settlement",
                                             [*exe, "settlement"]))
        self.children.append(Child("api", [*exe, "api", "--host", host,
                                           "--port", str(opts.api_port)],
                                   job="exchange-api", metrics=f"{host}:{opts.api_port}"))
        for i in range(gateways):
            if opts.gateway_ports:
                listen = ["--port", str(opts.gateway_ports[i])]
            else:  # one port shared; each is scraped on a port of its own
                listen = ["--port", str(opts.ws_port), "--reuse-port"]
            self.children.append(serving_metrics(f"gateway-{i + 1}", "exchange-gateway",
                                                 [*exe, "gateway", "--host", host, *listen]))
        if opts.prometheus_port:
            self._add_prometheus()
        for child in self.children:
            self._spawn(child)
        deadline = time.monotonic() + timeout
        self._wait_http(f"{self.api_url}/readyz", deadline)
        for url in self.ws_urls:
            self._wait_http(url.replace("ws://", "http://").replace("/ws", "/healthz"), deadline)
        if self.prometheus_url:
            self._wait_http(f"{self.prometheus_url}/-/ready", deadline)
        if opts.simulate_rate > 0:
            sim = Child("simulator", [*exe, "simulate", "--api-url", self.api_url,
                                      "--rate", str(opts.simulate_rate)])
            self.children.append(sim)
            self._spawn(sim)
        self._write_endpoints(markets.pairs)

    @property
    def scrape_targets(self) -> dict[str, list[str]]:
        """Prometheus job -> host:port of each process serving /metrics."""
        jobs: dict[str, list[str]] = {}
        for child in self.children:
            if child.job:
                jobs.setdefault(child.job, []).append(child.metrics)
        return jobs

    @property
    def prometheus_url(self) -> str | None:
        port = self.options.prometheus_port
        has = any(child.name == "prometheus" for child in self.children)
        return f"http://{self.options.host}:{port}" if has else None

    def _add_prometheus(self) -> None:
        """Prometheus (if installed) scraping every service, with the alert rules of
        observability/ (when run from a checkout, where they are)."""
        binary = shutil.which("prometheus")
        if binary is None:
            print("prometheus is not installed: no local metrics server "
                  "(apt-get install prometheus)", file=sys.stderr)
            return
        home = (self.options.data_dir / "prometheus").resolve()
        home.mkdir(parents=True, exist_ok=True)
        rules = sorted(str(path) for path in OBSERVABILITY.glob("alerts/*.yaml"))
        config = {
            "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
            "rule_files": rules,
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}
                               for job, targets in self.scrape_targets.items()],
        }
        (home / "prometheus.yml").write_text(json.dumps(config, indent=2) + "\n")
        self.children.append(Child("prometheus", [
            binary, f"--config.file={home / 'prometheus.yml'}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address={self.options.host}:{self.options.prometheus_port}"],
            log=home / "prometheus.log"))

    def _start_cluster(self, timeout: float) -> str:
        opts = self.options
        redis_dir = opts.data_dir / "redis"
        ports_file = redis_dir / "ports.json"
        count = opts.masters * (1 + opts.replicas)
        if ports_file.exists():  # a restart reuses the ports, so nodes.conf still matches
            ports = json.loads(ports_file.read_text())
        else:
            ports = list(range(opts.redis_base_port, opts.redis_base_port + count))
            if not all(port_free(p) and port_free(p + 10000) for p in ports):
                ports = free_ports(count)
                print(f"ports {opts.redis_base_port}.. are taken; Redis uses {ports}")
            redis_dir.mkdir(parents=True, exist_ok=True)
            ports_file.write_text(json.dumps(ports))
        self.cluster = LocalRedisCluster(ClusterSpec(redis_dir, tuple(ports), opts.masters,
                                                     opts.replicas, opts.host))
        self.cluster.start(timeout)
        return self.cluster.url

    def _secrets_key(self) -> str:
        """EXCHANGE_SECRETS_KEY, else the key kept in the data dir (made on first run), so
        API secrets sealed by one run open in the next."""
        if os.environ.get(SECRETS_KEY_ENV):
            return os.environ[SECRETS_KEY_ENV]
        path = self.options.data_dir / "secrets.key"
        if not path.exists():
            path.write_text(new_key())
            path.chmod(0o600)
        return path.read_text().strip()

    def _child_env(self) -> dict[str, str]:
        opts = self.options
        env = dict(os.environ)
        env.update({
            SECRETS_KEY_ENV: self._secrets_key(),
            "REDIS_URL": self.redis_url,
            "EXCHANGE_ADMIN_TOKEN": opts.admin_token,
            "EXCHANGE_PUBLIC_WS_URL": self.ws_urls[0],
            "EXCHANGE_DEMO_FAUCET": os.environ.get("EXCHANGE_DEMO_FAUCET", "1"),
        })
        if opts.pairs_file:
            env["EXCHANGE_PAIRS_FILE"] = str(Path(opts.pairs_file).resolve())
        # Spans go to files `exchange trace` reads, with or without a collector; an
        # EXCHANGE_TRACE_DIR of the caller's wins (empty: no files).
        env.setdefault(TRACE_DIR_ENV, str((opts.data_dir / "traces").resolve()))
        return env

    def _spawn(self, child: Child) -> None:
        out = None
        log = child.log
        if log is None and self.options.log_dir:
            log = self.options.log_dir / f"{child.name}.log"
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            out = open(log, "ab")  # noqa: SIM115
        child.process = subprocess.Popen(
            child.argv, env=self._child_env(), stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT if out else None, start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    def _wait_http(self, url: str, deadline: float) -> None:
        while time.monotonic() < deadline:
            for child in self.children:
                if child.process and child.process.poll() is not None:
                    raise RuntimeError(f"{child.name} exited with {child.process.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{url} not ready in time")

    def _write_endpoints(self, pairs: dict) -> None:
        nodes = self.cluster.nodes if self.cluster else [self.redis_url]
        endpoints = {
            "api_url": self.api_url,
            "ws_url": self.ws_urls[0],
            "ws_urls": self.ws_urls,
            "redis_url": self.redis_url,
            "redis_nodes": nodes,
            "pairs": list(pairs),
            "admin_token": self.options.admin_token,
            "metrics": self.scrape_targets,
            "prometheus_url": self.prometheus_url,
        }
        path = self.options.data_dir / "endpoints.json"
        path.write_text(json.dumps(endpoints, indent=2) + "\n")
        path.chmod(0o600)  # it holds the admin token

    # ---- supervise and stop -----------------------------------------------------------

    def supervise(self) -> None:
        """Restart a child that dies on its own (with backoff) until stop() is called."""
        while not self.stopping.wait(0.5):
            for child in self.children:
                if child.process and child.process.poll() is not None:
                    child.restarts += 1
                    print(f"{child.name} exited with {child.process.returncode}; restarting",
                          file=sys.stderr)
                    time.sleep(min(0.5 * child.restarts, 5.0))
                    if not self.stopping.is_set():
                        self._spawn(child)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every child (newest first), wait, SIGKILL stragglers, stop Redis."""
        self.stopping.set()
        for child in reversed(self.children):
            if child.process and child.process.poll() is None:
                child.process.terminate()
        deadline = time.monotonic() + timeout
        for child in reversed(self.children):
            if child.process is None:
                continue
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
        if self.cluster:
            self.cluster.stop()

    def __enter__(self) -> LocalExchange:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    env = os.environ
    parser = argparse.ArgumentParser(prog="exchange up", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=env.get("EXCHANGE_HOST", "127.0.0.1"))
    parser.add_argument("--api-port", type=int, default=int(env.get("EXCHANGE_API_PORT", 8000)))
    parser.add_argument("--ws-port", type=int, default=int(env.get("EXCHANGE_WS_PORT", 8001)))
    parser.add_argument("--gateways", type=int, default=int(env.get("EXCHANGE_GATEWAYS", 2)))
    parser.add_argument("--standbys", type=int,
                        default=int(env.get("EXCHANGE_ENGINE_STANDBYS", 1)),
                        help="standby engine processes per pair")
    parser.add_argument("--redis-url", default=env.get("REDIS_URL") or None,
                        help="use this Redis Cluster or single node instead of a local one")
    parser.add_argument("--redis-port", type=int, default=int(env.get("EXCHANGE_REDIS_PORT", 7000)),
                        help="first port of the local cluster")
    parser.add_argument("--simulate-rate", type=float,
                        default=float(env.get("EXCHANGE_SIMULATE_RATE", 20)),
                        help="simulated orders per second; 0 turns the simulator off")
    parser.add_argument("--data-dir", type=Path,
                        default=Path(env.get("EXCHANGE_DATA_DIR", ".exchange")))
    parser.add_argument("--prometheus-port", type=int,
                        default=int(env.get("EXCHANGE_PROMETHEUS_PORT", 9090)),
                        help="local Prometheus, if installed; 0 = none")
    args = parser.parse_args(argv)
    for port in (args.api_port, args.ws_port):
        if not port_free(port, args.host):
            parser.error(f"port {port} on {args.host} is taken "
                         "(choose another with --api-port / --ws-port)")
    options = UpOptions(
        data_dir=args.data_dir, host=args.host, api_port=args.api_port, ws_port=args.ws_port,
        gateways=args.gateways, standbys=args.standbys, redis_url=args.redis_url,
        redis_base_port=args.redis_port,
        admin_token=env.get("EXCHANGE_ADMIN_TOKEN") or secrets.token_urlsafe(24),
        simulate_rate=args.simulate_rate, pairs_file=env.get("EXCHANGE_PAIRS_FILE"),
        prometheus_port=args.prometheus_port if port_free(args.prometheus_port, args.host)
        else 0,
    )
    exchange = LocalExchange(options)
    signal.signal(signal.SIGTERM, lambda *_: exchange.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: exchange.stopping.set())
    try:
        exchange.start()
        width = shutil.get_terminal_size().columns
        print("=" * min(width, 60))
        print(f"web page + REST  {exchange.api_url}/   (API docs: {exchange.api_url}/docs)")
        print(f"WebSocket        {exchange.ws_urls[0]}   ({options.gateways} gateway replicas)")
        print(f"Redis            {exchange.redis_url}")
        print(f"endpoints        {options.data_dir / 'endpoints.json'} (holds the admin token)")
        if exchange.prometheus_url:
            print(f"Prometheus       {exchange.prometheus_url}/alerts")
        print("Ctrl-C stops everything.")
        print("=" * min(width, 60), flush=True)
        exchange.supervise()
    finally:
        print("stopping...", flush=True)
        exchange.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
