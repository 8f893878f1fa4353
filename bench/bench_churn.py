"""What `debounce.drain` saves: the zero-downtime churn of tests/e2e/test_churn.py through
nginx, with `drain: true` and with `drain: false`, counting the requests nginx had to retry.

    python -m bench.bench_churn [--replacements 20] [--pool 3] [--rate 200] [--quiet 1000]
                                [--stop-grace 1.0] [--out FILE]

Each run is a real ``lbsync run`` (tests/support/harness.py) beside the lab nginx, with the
lab's ``nginx.conf`` replaced by one that logs every request with ``$upstream_addr`` and
``$upstream_status``. While a steady GET/POST load runs (``tests.support.churn.RequestLoop``),
``--replacements`` backends are replaced one by one (start the new one with a health check,
wait until it is healthy and routed, SIGTERM the old one: it serves ``--stop-grace`` seconds
more, then exits).

With `drain: true` lbsync takes the old backend out on its `kill` event, at once, while it
still serves; with `drain: false` the removal waits for the quiet window (``--quiet``,
default 1 s) after the last event, and the `die` at the end of the grace restarts it, so nginx
keeps choosing a backend that is gone: a refused connection is retried on another backend
(``proxy_next_upstream error``), a request cut when the backend exits is retried too unless it
is a POST (then it fails with 502). A retried request shows several addresses in
``$upstream_addr`` (``A, B``); they are counted from the access log (requests sent after the
load started), with the client's failed requests, nginx's non-200 answers, its error log's
upstream errors, and the time from each SIGTERM to lbsync's log line saying the backend is
out (after nginx reloaded). Figures only, nothing asserted; printed and written to ``--out``
(default /tmp/bench-haproxy-churn.md, a section of its own; ``bench.bench_runtime`` writes
another).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench.bench_runtime import DEFAULT_OUT, fmt_ms, interruptible, percentile, write_section
from tests.support.churn import ECHO_PATH, ChurnReport, run_churn
from tests.support.harness import LbsyncHarness
from tests.support.lab import Lab

LOG_DIR = "/var/log/lbsync-bench"
NGINX_CONF = f"""\
# lbsync bench_churn: the lab nginx.conf plus an access log of upstream attempts.
daemon off;
user root;
pid /run/nginx.pid;
error_log stderr notice;
events {{}}
http {{
    log_format lbsync_bench '$msec $request_method "$request_uri" $status '
                            '"$upstream_addr" "$upstream_status" $request_time';
    access_log {LOG_DIR}/access.log lbsync_bench;
    include /etc/nginx/conf.d/*.conf;
}}
"""


@dataclass
class AccessLog:
    """The churn's requests as nginx logged them."""

    requests: int = 0
    retried: int = 0
    retried_by_method: Counter[str] = field(default_factory=Counter)
    non_200: int = 0
    attempts: Counter[str] = field(default_factory=Counter)  # "$upstream_status" of retried

    @classmethod
    def parse(cls, text: str, since: float) -> AccessLog:
        log = cls()
        for line in text.splitlines():
            # 1764312345.123 GET "/cgi-bin/echo" 200 "127.0.0.1:1, 127.0.0.1:2" "502, 200" 0.004
            parts = line.split('"')
            if len(parts) < 7:
                continue
            head = parts[0].split()
            if len(head) < 2 or not parts[1].startswith(ECHO_PATH):
                continue
            try:
                if float(head[0]) < since:
                    continue
                status = int(parts[2].split()[0])
            except (ValueError, IndexError):
                continue
            log.requests += 1
            if status != 200:
                log.non_200 += 1
            if "," in parts[3]:
                log.retried += 1
                log.retried_by_method[head[1]] += 1
                log.attempts[parts[5]] += 1
        return log


#: nginx's error log lines about upstreams, by what went wrong.
UPSTREAM_ERRORS = {
    "refused": "Connection refused",
    "reset": "reset by peer",
    "closed early": "prematurely closed",
    "timed out": "timed out",
}


# 2026-11-28T06:18:26.930Z INFO target t-x: reloaded nginx-1 in 185 ms: servers +a/c:1 -a/d:2
CHANGE_RE = re.compile(
    r"^(?P<at>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z INFO target \S+: "
    r"(?:reloaded|updated) .* in \d+ ms: (?P<change>.*)$"
)


def removals(lbsync_log: str, kills: dict[str, float]) -> list[float]:
    """Seconds from each old backend's SIGTERM to lbsync's log line that says the proxy no
    longer has it (after its reload, or runtime update)."""
    removed: dict[str, float] = {}
    for line in lbsync_log.splitlines():
        match = CHANGE_RE.match(line)
        if match is None:
            continue
        at = datetime.fromisoformat(match["at"]).replace(tzinfo=UTC).timestamp()
        for token in match["change"].replace(";", " ").split():
            if token.startswith("-") and "/" in token:
                name = token[1:].split("/", 1)[1].rsplit(":", 1)[0]
                removed.setdefault(name, at)
    return [removed[name] - at for name, at in kills.items() if name in removed]


@dataclass
class Run:
    drain: bool
    churn: ChurnReport
    log: AccessLog
    errors: Counter[str]
    removal_s: list[float]


def run_one(drain: bool, args: argparse.Namespace) -> Run:
    with (
        Lab() as lab,
        tempfile.TemporaryDirectory(prefix="lbsync-bench-churn-") as tmp,
    ):
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(NGINX_CONF)
        logs = Path(tmp) / "logs"
        logs.mkdir()
        harness = LbsyncHarness(
            lab,
            Path(tmp),
            config={
                "debounce": {
                    "quiet": f"{args.quiet:g}ms",
                    "max": f"{max(args.quiet * 3, 2000):g}ms",
                    "drain": drain,
                },
                "log": {"level": "info"},
            },
            proxy_extra=["--volume", f"{conf}:/etc/nginx/nginx.conf:ro",
                         "--volume", f"{logs}:{LOG_DIR}"],
        )  # fmt: skip
        with harness as h:
            churn = run_churn(
                h,
                lab,
                replacements=args.replacements,
                pool=args.pool,
                rate=args.rate,
                concurrency=args.concurrency,
                stop_grace=args.stop_grace,
                progress=lambda line: print(f"  drain={drain}: {line}", flush=True),
            )
            text = (logs / "access.log").read_text(errors="replace")
            access = AccessLog.parse(text, churn.load_started)
            errors: Counter[str] = Counter()
            for line in lab.logs(h.proxy_ids[0]).splitlines():
                if "[error]" in line and "upstream" in line:
                    kind = next((k for k, v in UPSTREAM_ERRORS.items() if v in line), "other")
                    errors[kind] += 1
            removal_s = removals(h.log_text(), churn.kills)
    return Run(drain, churn, access, errors, removal_s)


def report(runs: Sequence[Run], args: argparse.Namespace) -> str:
    lines = [
        "## nginx churn: `debounce.drain` on and off (`python -m bench.bench_churn`)",
        "",
        f"{args.replacements} replacements (pool {args.pool}; each: start a new backend with a "
        f"health check, wait healthy and routed, SIGTERM the old one, which serves "
        f"{args.stop_grace:g} s more and exits) under GET/POST load paced at {args.rate:g}/s, "
        f"debounce quiet {args.quiet:g} ms. Retried = requests whose `$upstream_addr` lists "
        "several backends (nginx's access log).",
        "",
        "| drain | requests (client) | failed (client) | non-200 (nginx) | retried by nginx "
        "| retried GET / POST | attempts of retried requests | nginx upstream errors "
        "| SIGTERM to out of nginx, p50 / max ms | nginx reloads | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        load, log = run.churn.load, run.log
        attempts = ", ".join(f"`{k}` x{v}" for k, v in log.attempts.most_common(3)) or "-"
        errors = ", ".join(f"{k} {v}" for k, v in sorted(run.errors.items())) or "-"
        removal_ms = [s * 1000 for s in run.removal_s]
        out_p50 = fmt_ms(percentile(removal_ms, 50))
        out_max = fmt_ms(max(removal_ms, default=math.nan))
        lines.append(
            f"| {str(run.drain).lower()} | {load.requests} ({load.rate:.0f}/s) | {load.failed} "
            f"| {log.non_200} of {log.requests} | {log.retried} "
            f"| {log.retried_by_method['GET']} / {log.retried_by_method['POST']} | {attempts} "
            f"| {errors} | {out_p50} / {out_max} ({len(run.removal_s)}) "
            f"| {run.churn.reloads:g} | {run.churn.seconds:.0f} |"
        )
    for run in runs:
        for failure in run.churn.load.failures[:5]:
            # The proxy's HTML error page, as one short line.
            short = " ".join(re.sub(r"<[^>]*>|\\[rn]", " ", failure).split())[:120]
            lines.append(f"- drain={str(run.drain).lower()} failure: {short}")
    lines += [
        "",
        "With drain the old backend leaves nginx on its `kill` event, while it still serves; "
        "without it, nginx keeps choosing it until the quiet window after its `die` ends: its "
        "refused connections are retried elsewhere (nginx then marks it down for "
        "`fail_timeout`, 10 s, per worker, so most requests skip it after the first refusal), "
        "and a POST it had received when it exited fails with 502 (nginx never resends a "
        "non-idempotent request). Figures only, on a shared 2-core machine.",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_churn",
        description="nginx churn through lbsync with debounce.drain on and off.",
    )
    parser.add_argument("--replacements", type=int, default=20, help="default 20")
    parser.add_argument("--pool", type=int, default=3, help="backends serving (default 3)")
    parser.add_argument("--rate", type=float, default=200.0, help="requests/s (default 200)")
    parser.add_argument("--concurrency", type=int, default=8, help="client workers (default 8)")
    parser.add_argument("--quiet", type=float, default=1000.0, help="debounce quiet, ms")
    parser.add_argument("--stop-grace", type=float, default=1.0, help="backend grace, s")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    runs = []
    with interruptible():
        for drain in (True, False):
            print(f"drain={str(drain).lower()}: {args.replacements} replacements ...", flush=True)
            run = run_one(drain, args)
            print(f"drain={str(drain).lower()}: {run.churn.summary()}", flush=True)
            runs.append(run)
    text = report(runs, args)
    print()
    print(text)
    write_section(args.out, "bench_churn", text)
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
