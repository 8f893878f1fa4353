"""Helpers the tests share: the lab, the harness around `lbsync run`, fake engines, proxies
and builders. Test files import from here, never from one another."""
