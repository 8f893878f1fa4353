"""The proxy check across several matching containers, on the REAL engine (SPEC §1).

A real nginx beside containers anyone could have labelled as the proxy: one with no nginx at
all, one whose `nginx` refuses everything, one whose `nginx` never ends. The check runs in all
of them at once; the file's fate is nginx's verdict, the others are reported.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lbsync.apply.proxy import CheckOutcome, LeftOutReason, check_all, decide
from lbsync.config.schema import TargetConfig
from lbsync.engine.client import DockerClient
from lbsync.engine.container import Container
from lbsync.engine.inspect import container_from_inspect
from tests.support.lab import Lab, free_port

pytestmark = pytest.mark.engine

GOOD_CONF = "server { listen 127.0.0.1:%d; return 200 ok; }\n"
BAD_CONF = "server { listen 127.0.0.1:%d; bogus_directive on; }\n"


def _fake_nginx(lab: Lab, name: str, script: str) -> str:
    """A lab backend (busybox, no nginx) given a `/bin/nginx` that runs `script`."""
    cid = lab.run_backend(free_port(), name=name)
    lab.exec(cid, "sh", "-c", f"printf '#!/bin/sh\\n{script}\\n' > /bin/nginx; chmod +x /bin/nginx")
    return cid


async def _containers(engine: DockerClient, ids: list[str]) -> list[Container]:
    return [container_from_inspect(await engine.inspect_container(cid)) for cid in ids]


def _target(tmp_path: Path) -> TargetConfig:
    return TargetConfig(name="edge", template="builtin:nginx", output=tmp_path / "lbsync.conf")


async def test_nginx_decides_and_the_others_are_reported(
    lab: Lab, engine: DockerClient, tmp_path: Path
) -> None:
    conf_dir = tmp_path / "conf.d"
    conf_dir.mkdir()
    tag = f"{time.monotonic_ns() % 10**8}"
    nginx = lab.run_nginx(conf_dir, name=f"zzz-h17a-nginx-{tag}")
    none = lab.run_backend(free_port(), name=f"aaa-h17a-none-{tag}")
    refuses = _fake_nginx(lab, f"aab-h17a-refuses-{tag}", "echo fake refusal >&2; exit 1")
    hangs = _fake_nginx(lab, f"aac-h17a-hangs-{tag}", "sleep 30")
    proxies = await _containers(engine, [none, refuses, hangs, nginx])
    names = [p.name for p in proxies]
    target = _target(tmp_path)

    (conf_dir / "site.conf").write_text(GOOD_CONF % free_port())
    started = time.monotonic()
    results = await check_all(engine, target, proxies, grace=1.0)
    took = time.monotonic() - started
    assert [r.container for r in results] == names
    outcomes = {r.container: r.outcome for r in results}
    assert outcomes == {
        names[0]: CheckOutcome.UNRUNNABLE,  # exec: "nginx": executable file not found (126)
        names[1]: CheckOutcome.REFUSED,
        names[2]: CheckOutcome.UNRUNNABLE,  # still running 1 s after nginx passed
        names[3]: CheckOutcome.OK,
    }, results
    assert took < 10, f"a hanging checker held the check for {took:.1f} s"
    assert "not found" in results[0].message
    assert "still running" in results[2].message

    decision = decide(results)
    assert decision.keep
    assert decision.reload == (names[3],)
    reasons = {e.container: e.reason for e in decision.left_out}
    assert reasons == {
        names[0]: LeftOutReason.UNRUNNABLE,
        names[1]: LeftOutReason.DISAGREED,
        names[2]: LeftOutReason.UNRUNNABLE,
    }
    assert any(e.message == "fake refusal" for e in decision.left_out)

    # What nginx refuses is refused, whatever the rest says (the liar that refuses anyway
    # agrees here; the hanging one is waited for: nothing passed yet).
    (conf_dir / "site.conf").write_text(BAD_CONF % free_port())
    refused = decide(await check_all(engine, target, [proxies[0], proxies[1], proxies[3]]))
    assert not refused.keep and refused.ran
    assert "bogus_directive" in refused.refusal
    assert [e.container for e in refused.left_out] == [names[0]]


async def test_a_check_that_runs_nowhere_keeps_nothing(
    lab: Lab, engine: DockerClient, tmp_path: Path
) -> None:
    none = lab.run_backend(free_port())
    decision = decide(await check_all(engine, _target(tmp_path), await _containers(engine, [none])))
    assert not decision.keep
    assert not decision.ran
    assert "could not run in any proxy container" in decision.refusal
