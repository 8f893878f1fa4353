"""The one-line summary of a routing change that each reload logs (and /status shows)."""

from __future__ import annotations

from lbsync.daemon.reports import describe_change
from lbsync.model.types import RoutingModel
from tests.support.model_builders import host, model, srv, ups


def test_first_pass_counts_what_is_served() -> None:
    web = ups("web", srv("127.0.0.1", 8081, name="web-1"), srv("127.0.0.1", 8082, name="web-2"))
    assert describe_change(None, model(host("a.test", ("/", web)))) == "1 hosts, 2 servers"


def test_hosts_and_servers_in_and_out() -> None:
    web1 = srv("127.0.0.1", 8081, name="web-1")
    web2 = srv("127.0.0.1", 8082, name="web-2")
    api = ups("api", srv("127.0.0.1", 9000, name="api-1"))
    before = model(host("a.test", ("/", ups("web", web1))), host("b.test", ("/", api)))
    after = model(host("a.test", ("/", ups("web", web2))), host("c.test", ("/", api)))
    assert describe_change(before, after) == (
        "hosts +c.test -b.test; servers +web/web-2:8082 -web/web-1:8081"
    )


def test_an_upstream_that_went_away_lists_its_servers() -> None:
    web = ups("web", srv("127.0.0.1", 8081, name="web-1"))
    api = ups("api", srv("127.0.0.1", 9000, name="api-1"))
    before = model(host("a.test", ("/", web), ("/api", api)))
    after = model(host("a.test", ("/", web)))
    assert describe_change(before, after) == "servers -api/api-1:9000"


def test_the_same_model_is_no_routing_change() -> None:
    m = model(host("a.test", ("/", ups("web", srv("127.0.0.1", 8081)))))
    assert describe_change(m, m) == "no routing change"


def test_only_what_changed_whatever_the_positions() -> None:
    upstream = {n: ups(n, srv("127.0.0.1", 8000 + i, name=f"{n}-1")) for i, n in enumerate("abcd")}
    hosts = {n: host(f"{n}.test", ("/", upstream[n])) for n in "abcd"}

    def of(names: str) -> RoutingModel:
        return model(*(hosts[n] for n in names))  # the same objects, as a ModelBuilder keeps

    # One out, one in: every position moves, the lengths stay.
    assert (
        describe_change(of("abc"), of("bcd"))
        == "hosts +d.test -a.test; servers +d/d-1:8003 -a/a-1:8000"
    )
    assert describe_change(of("ab"), of("abc")) == "hosts +c.test; servers +c/c-1:8002"
    assert describe_change(of("abc"), of("ac")) == "hosts -b.test; servers -b/b-1:8001"
