"""What one target's passes remember between runs, and the phases of its proxy's config.

A target's state, beside its settings, is the file, the proxy and the status:

- The file. `on_disk` is what lbsync last wrote to the output or read from it (None: there
  is no file); it holds only while `known`. A pass reads the file when it is not known: the
  first pass, and after a refused file could not be put back. `rejected` is the last
  bytes the check refused: they are not tried again until they change or the settings do
  (`reconfigure`).
- The proxy. `phase` (a `ReloadPhase`) says whether the proxy runs the file on disk;
  `reloaded_with` and `slots` are the settings and the haproxy-runtime slots of its last
  reload (or runtime update, for `slots`). `waiting_for_proxy`: no proxy container ran at the
  last pass, so nothing was written. `retry_delay`: how long until a pass after a failed
  reload (or a check that ran nowhere) is retried; it doubles up to RETRY_PASS_MAX and is
  back to RETRY_PASS_MIN once a reload worked.
- The status (the status page, /healthz). `model` is the model the proxy runs; the
  `last_*` fields; `left_out`: the proxy containers reported and not reloaded.

The rest is memory that makes a pass cost what changed and logs a thing once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from lbsync.apply.proxy import LeftOut
from lbsync.apply.selection import ProxyTracker
from lbsync.config.schema import TargetConfig
from lbsync.daemon.plan import ReloadPhase
from lbsync.engine.container import Container
from lbsync.model.builder import ModelBuilder
from lbsync.model.slots import RuntimeSlots
from lbsync.model.types import RoutingModel
from lbsync.render.fragments import FragmentCache
from lbsync.render.templates import CompiledTemplate

RETRY_PASS_MIN = 1.0
RETRY_PASS_MAX = 30.0


@dataclass
class TargetState:
    """What one target's passes remember between runs (see the module's docstring)."""

    config: TargetConfig
    template: CompiledTemplate
    # -- the file --
    on_disk: bytes | None = None  # what we last wrote or read; None with known=False: unread
    known: bool = False
    rejected: bytes | None = None  # the last bytes the check refused: not retried unchanged
    # -- the proxy --
    phase: ReloadPhase = ReloadPhase.NOT_RELOADED
    reloaded_with: TargetConfig | None = None  # the settings the proxy last reloaded with
    slots: RuntimeSlots | None = None  # haproxy-runtime: the slots the running HAProxy has
    waiting_for_proxy: bool = False
    retry_delay: float = RETRY_PASS_MIN
    # -- the status --
    model: RoutingModel | None = None
    last_pass_at: float | None = None
    last_reload_at: float | None = None
    last_reload_result: str | None = None
    last_error: str | None = None
    # Proxy containers reported and not reloaded (SPEC §1), by container id.
    left_out: dict[str, LeftOut] = field(default_factory=dict)
    # -- logged once --
    warned_skips: set[str] = field(default_factory=set)
    services_left_out: set[str] = field(default_factory=set)  # services the last render left out
    # -- what makes a pass cost what changed --
    # The model is patched, unchanged blocks are not re-rendered, and an unchanged model with
    # the same template and settings is not rendered at all.
    builder: ModelBuilder = field(default_factory=ModelBuilder)
    proxies: ProxyTracker = field(default_factory=ProxyTracker)
    fragments: FragmentCache = field(default_factory=FragmentCache)
    reported: RoutingModel | None = None  # the model the metrics and skip logs describe
    rendered: tuple[object, ...] = ()  # (model, template, config, slots) of `rendered_data`
    # Kept as bytes only: the text would be a second copy of the whole file (0.7 MB at
    # 1,000 containers), and an unchanged pass would encode it again.
    rendered_data: bytes = b""

    def reconfigure(self, config: TargetConfig, template: CompiledTemplate) -> None:
        """New settings (a live config reload, same output): the bytes refused under the old
        ones may pass now."""
        self.config = config
        self.template = template
        self.rejected = None

    def wait_for_proxy(self) -> bool:
        """No proxy container runs: nothing is written until one does. True when the wait
        begins (it is logged once)."""
        began = not self.waiting_for_proxy
        self.waiting_for_proxy = True
        self.last_error = "proxy container missing"
        return began

    def proxy_found(self, proxies: Sequence[Container]) -> bool:
        """The proxy containers run: True when a wait for them ends (logged once). A left-out
        container that is gone (or no longer a proxy) is not reported any more."""
        ended = self.waiting_for_proxy
        self.waiting_for_proxy = False
        if self.left_out:
            current_ids = {p.id for p in proxies}
            self.left_out = {k: v for k, v in self.left_out.items() if k in current_ids}
        return ended

    def reload_due(self) -> None:
        """The file on disk is not live yet: written and checked, or a reload or a runtime
        update failed."""
        if self.phase is ReloadPhase.CURRENT:
            self.phase = ReloadPhase.RELOAD_DUE

    def reload_worked(self, now: float) -> None:
        self.phase = ReloadPhase.CURRENT
        self.last_reload_at = now
        self.last_reload_result = "ok"
        self.last_error = None
        self.retry_delay = RETRY_PASS_MIN

    def reload_failed(self, message: str) -> None:
        self.reload_due()
        self.last_reload_result = "error"
        self.last_error = f"reload failed: {message}"

    def back_off(self) -> float:
        """The delay before this retry; the next one waits twice as long (to a limit)."""
        delay = self.retry_delay
        self.retry_delay = min(RETRY_PASS_MAX, delay * 2)
        return delay
