// lbsync status page: polls `status` (JSON) and `healthz` every 2 s and rebuilds the parts of
// the page that lbsync/web/status.html.j2 renders on the server, with the same markup.
// Every value from lbsync (container names, labels, errors) is untrusted: it only ever reaches
// the page as a text node (textContent / append of a string) or a plain attribute value,
// never as HTML. No innerHTML, no eval, nothing from another origin.
(function () {
  "use strict";

  var POLL_MS = Number(document.body.getAttribute("data-poll-ms")) || 2000;
  var HEALTH_WORDS = {
    healthy: "healthy",
    none: "no health check",
    starting: "starting",
    unhealthy: "unhealthy"
  };
  var SKIP_TONES = {
    invalid_label: "bad",
    unsupported_host: "bad",
    no_host: "warn",
    no_port: "warn",
    ambiguous_port: "warn",
    no_service: "warn",
    no_address: "warn",
    not_published: "warn",
    not_healthy: "warn",
    not_running: "muted"
  };

  var lastKey = null;
  var lastOkAt = null;
  var polls = 0;
  var timer = null;

  // ---- building blocks -------------------------------------------------------------------

  // h("td", {"data-label": "Host"}, "text", node, ...): attributes are set with setAttribute,
  // children strings become text nodes. Null/undefined/false attributes and children are left out.
  function h(tag, attrs) {
    var el = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (name) {
        var value = attrs[name];
        if (value === null || value === undefined || value === false) return;
        el.setAttribute(name, value === true ? "" : String(value));
      });
    }
    for (var i = 2; i < arguments.length; i++) appendChild(el, arguments[i]);
    return el;
  }

  function appendChild(el, child) {
    if (child === null || child === undefined || child === false) return;
    if (Array.isArray(child)) {
      child.forEach(function (c) { appendChild(el, c); });
    } else if (child instanceof Node) {
      el.appendChild(child);
    } else {
      el.appendChild(document.createTextNode(String(child)));
    }
  }

  function sep() { return h("span", { "class": "sep" }, "·"); }

  function plural(n, word) { return n + " " + word + (n === 1 ? "" : "s"); }

  function ago(iso) {
    if (!iso) return "never";
    var at = Date.parse(iso);
    if (isNaN(at)) return iso;
    var seconds = Math.max(0, Math.floor((Date.now() - at) / 1000));
    if (seconds < 5) return "just now";
    if (seconds < 60) return seconds + " s ago";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min ago";
    if (seconds < 86400) return Math.floor(seconds / 3600) + " h ago";
    return Math.floor(seconds / 86400) + " d ago";
  }

  function when(iso) {
    return h("time", { datetime: iso || "", title: iso || null }, ago(iso));
  }

  function badge(tone, text) { return h("span", { "class": "badge", "data-tone": tone }, text); }

  function address(server) {
    var a = server.address.indexOf(":") >= 0 ? "[" + server.address + "]" : server.address;
    return a + ":" + server.port;
  }

  function changeText(text) {
    return text.split(" ").map(function (word, i) {
      var cls = word.charAt(0) === "+" ? "add" : word.charAt(0) === "-" ? "del" : "";
      return [i ? " " : null, h("span", { "class": cls }, word)];
    });
  }

  function replace(id, nodes) {
    var el = document.getElementById(id);
    if (!el) return null;
    while (el.firstChild) el.removeChild(el.firstChild);
    appendChild(el, nodes);
    return el;
  }

  // ---- the view (same as lbsync/web/statuspage.py page_view) -----------------------------------

  function pageView(doc, problems) {
    var hosts = {};
    var routes = 0;
    var servers = 0;
    var skipped = {};
    var targets = doc.targets.map(function (t) {
      var upstreams = {};
      t.upstreams.forEach(function (u) { upstreams[u.name] = u; });
      var rows = [];
      t.hosts.forEach(function (host) {
        hosts[host.name] = true;
        host.routes.forEach(function (route) {
          var upstream = upstreams[route.upstream] ||
            { name: route.upstream, balance: "", servers: [] };
          rows.push({ host: host.name, path: route.path, upstream: upstream });
          routes += 1;
        });
      });
      t.upstreams.forEach(function (u) { servers += u.servers.length; });
      t.skipped.forEach(function (s) { skipped[s.container_id + " " + s.reason] = true; });
      return { doc: t, rows: rows };
    });
    return {
      targets: targets,
      problems: problems,
      counts: {
        hosts: Object.keys(hosts).length,
        routes: routes,
        servers: servers,
        skipped: Object.keys(skipped).length,
        containers: doc.containers
      }
    };
  }

  // ---- sections -------------------------------------------------------------------------

  function renderProblems(problems) {
    var section = document.getElementById("problems");
    replace("problem-list", problems.map(function (p) { return h("li", null, p); }));
    if (section) section.hidden = problems.length === 0;
  }

  function tile(id, tone, label, value, sub) {
    return h("div", { "class": "tile", "data-tone": tone, id: id },
      h("span", { "class": "tile-label" }, label),
      h("span", { "class": "tile-value" }, value),
      h("span", { "class": "tile-sub" }, sub));
  }

  function renderOverview(doc, view) {
    var n = view.problems.length;
    var engine = doc.engine;
    var engineSub = engine.connected && engine.api_version ? "API " + engine.api_version
      : engine.disconnected_since ? "since " + ago(engine.disconnected_since) : "connecting";
    var c = view.counts;
    replace("overview", [
      tile("tile-status", n ? "bad" : "ok", "Health", n ? plural(n, "problem") : "Healthy",
        "/healthz " + (n ? 503 : 200)),
      tile("tile-engine", engine.connected ? "ok" : "bad", "Engine",
        engine.connected ? "Connected" : "Disconnected", engineSub),
      tile("tile-hosts", "", "Hosts", String(c.hosts), plural(c.routes, "route")),
      tile("tile-backends", "", "Backends", String(c.servers), "getting traffic"),
      tile("tile-skipped", c.skipped ? "warn" : "", "Skipped", String(c.skipped), "not routed"),
      tile("tile-containers", "", "Containers", String(c.containers), "on the engine")
    ]);
  }

  function reloadBadge(t) {
    if (t.waiting_for_proxy) return badge("warn", "waiting for proxy");
    if (t.last_reload_result === "ok") return badge("ok", "reload ok");
    if (t.last_reload_result) return badge("bad", "reload " + t.last_reload_result);
    return badge("muted", "no reload yet");
  }

  function backendItem(s) {
    var ok = s.health === "healthy" || s.health === "none";
    var meta = (HEALTH_WORDS[s.health] || s.health) + (s.weight !== 1 ? " · weight " + s.weight : "");
    return h("li", { "class": "backend", "data-tone": ok ? "ok" : "warn" },
      h("span", { "class": "dot", "aria-hidden": "true" }),
      h("span", { "class": "backend-name" }, s.container),
      h("span", { "class": "backend-addr mono" }, address(s)),
      h("span", { "class": "backend-meta" }, meta));
  }

  function routeRow(row) {
    var u = row.upstream;
    var backends = u.servers.length
      ? h("ul", { "class": "backends" }, u.servers.map(backendItem))
      : h("span", { "class": "no-backends" }, "no backends: answers 503");
    return h("tr", { "class": "route" },
      h("td", { "data-label": "Host" }, h("span", { "class": "host" }, row.host)),
      h("td", { "data-label": "Path" }, h("code", { "class": "path" }, row.path)),
      h("td", { "data-label": "Upstream", "class": "upstream" },
        h("span", { "class": "mono" }, u.name),
        u.balance ? [" ", h("span", { "class": "sub" }, u.balance.replace(/_/g, " "))] : null),
      h("td", { "data-label": "Backends" }, backends));
  }

  function skippedTable(skipped) {
    if (!skipped.length) return h("p", { "class": "none" }, "None: every labelled container is routed.");
    return h("table", { "class": "skipped" },
      h("thead", null, h("tr", null,
        h("th", { scope: "col" }, "Container"),
        h("th", { scope: "col" }, "Reason"),
        h("th", { scope: "col" }, "Detail"))),
      h("tbody", null, skipped.map(function (s) {
        return h("tr", null,
          h("td", { "data-label": "Container" },
            h("span", { "class": "container-name" }, s.container), " ",
            h("span", { "class": "sub mono" }, s.container_id.slice(0, 12))),
          h("td", { "data-label": "Reason" }, badge(SKIP_TONES[s.reason] || "muted", s.reason)),
          h("td", { "data-label": "Detail", "class": "detail" }, s.detail));
      })));
  }

  function leftOutTable(leftOut) {
    if (!leftOut || !leftOut.length) return null;
    return [
      h("h3", null, "Proxy containers not reloaded ",
        h("span", { "class": "count" }, String(leftOut.length))),
      h("table", { "class": "left-out" },
        h("thead", null, h("tr", null,
          h("th", { scope: "col" }, "Container"),
          h("th", { scope: "col" }, "Reason"),
          h("th", { scope: "col" }, "Detail"))),
        h("tbody", null, leftOut.map(function (p) {
          return h("tr", null,
            h("td", { "data-label": "Container" },
              h("span", { "class": "container-name" }, p.container), " ",
              h("span", { "class": "sub mono" }, p.container_id.slice(0, 12))),
            h("td", { "data-label": "Reason" }, badge("warn", p.reason)),
            h("td", { "data-label": "Detail", "class": "detail" }, p.detail));
        })))
    ];
  }

  function targetSection(item) {
    var t = item.doc;
    var rows = item.rows.length ? item.rows.map(routeRow)
      : h("tr", { "class": "empty" }, h("td", { colspan: "4" },
        "No routes: no running container declares a host for this target."));
    return h("section", { "class": "card target" },
      h("header", { "class": "card-head" },
        h("div", { "class": "card-title" },
          h("h2", null, h("span", { "class": "kicker" }, "Target"), " ",
            h("span", { "class": "mono" }, t.name)),
          h("p", { "class": "meta" }, h("span", { "class": "mono" }, t.output), " ", sep(), " ",
            t.template, " ", sep(), " reload: " + t.reload)),
        h("div", { "class": "reload-state" }, reloadBadge(t),
          h("span", { "class": "when" }, "last reload ", when(t.last_reload), " ", sep(),
            " last pass ", when(t.last_pass)))),
      t.last_error ? h("p", { "class": "alert" }, t.last_error) : null,
      leftOutTable(t.proxies_left_out),
      h("h3", null, "Routes ", h("span", { "class": "count" }, String(item.rows.length))),
      h("table", { "class": "routes" },
        h("thead", null, h("tr", null,
          h("th", { scope: "col" }, "Host"),
          h("th", { scope: "col" }, "Path"),
          h("th", { scope: "col" }, "Upstream"),
          h("th", { scope: "col" }, "Backends"))),
        h("tbody", null, rows)),
      h("h3", null, "Skipped containers ", h("span", { "class": "count" }, String(t.skipped.length))),
      skippedTable(t.skipped));
  }

  function fact(term, value, cls) {
    return [h("dt", null, term), h("dd", { "class": cls || null }, value)];
  }

  function renderEngine(e) {
    replace("engine", [
      fact("State", [badge(e.connected ? "ok" : "bad", e.connected ? "connected" : "disconnected"),
        !e.connected && e.disconnected_since ? [" since ", when(e.disconnected_since)] : null]),
      fact("Endpoint", e.endpoint, "mono"),
      fact("API version", e.api_version || "–"),
      fact("Events", String(e.events)),
      fact("Reconnects", String(e.reconnects)),
      fact("Last error", e.last_error || "–", e.last_error ? "error-text" : null)
    ]);
  }

  function renderConfig(doc) {
    var c = doc.config;
    replace("config", [
      fact("State", badge(c.error ? "bad" : "ok", c.error ? "edit refused" : "loaded")),
      fact("File", c.source || "built-in defaults", "mono"),
      fact("Error", c.error || "–", c.error ? "error-text" : null),
      fact("Running since", when(doc.started_at)),
      fact("Version", doc.version)
    ]);
  }

  function renderChanges(changes) {
    replace("changes-count", String(changes.length));
    replace("changes", changes.length ? changes.map(function (c) {
      return h("tr", null,
        h("td", { "data-label": "When" }, when(c.at)),
        h("td", { "data-label": "Target", "class": "mono" }, c.target),
        h("td", { "data-label": "Change", "class": "change" }, changeText(c.change)),
        h("td", { "data-label": "Took", "class": "num" }, Math.round(c.duration_ms) + " ms"));
    }) : h("tr", { "class": "empty" }, h("td", { colspan: "4" }, "No reload yet.")));
  }

  function render(doc, problems) {
    var view = pageView(doc, problems);
    renderProblems(problems);
    renderOverview(doc, view);
    replace("targets", view.targets.map(targetSection));
    renderEngine(doc.engine);
    renderConfig(doc);
    renderChanges(doc.recent_changes);
    replace("version", "v" + doc.version);
    applyFilter();
  }

  // ---- filter, clock, live state -----------------------------------------------------------

  function applyFilter() {
    var input = document.getElementById("filter");
    var words = input ? input.value.toLowerCase().split(/\s+/).filter(Boolean) : [];
    document.querySelectorAll("tr.route").forEach(function (row) {
      var text = row.textContent.toLowerCase();
      row.hidden = !words.every(function (w) { return text.indexOf(w) >= 0; });
    });
  }

  function updateTimes() {
    document.querySelectorAll("time[datetime]").forEach(function (el) {
      var iso = el.getAttribute("datetime");
      var text = ago(iso);
      if (el.textContent !== text) el.textContent = text;
    });
  }

  function setLive(state, detail) {
    var live = document.getElementById("live");
    if (!live) return;
    live.setAttribute("data-state", state);
    var text = state === "live" ? "live"
      : "offline, retrying" + (lastOkAt ? " (updated " + ago(new Date(lastOkAt).toISOString()) + ")" : "");
    replace("live-text", text);
    live.setAttribute("title", detail || "updates every " + POLL_MS / 1000 + " s");
  }

  function fetchText(url) {
    return fetch(url, { cache: "no-store", credentials: "same-origin" }).then(function (res) {
      return res.text().then(function (text) { return { status: res.status, text: text }; });
    });
  }

  function poll() {
    timer = null;
    if (document.hidden) {
      schedule();
      return;
    }
    Promise.all([fetchText("status"), fetchText("healthz")]).then(function (answers) {
      var status = answers[0];
      var health = answers[1];
      if (status.status !== 200) throw new Error("/status answered " + status.status);
      var problems = health.status === 200 ? []
        : health.text.split("\n").filter(function (line) { return line.trim() !== ""; });
      var key = status.text + "\u0000" + problems.join("\n");
      if (key !== lastKey) {
        render(JSON.parse(status.text), problems);
        lastKey = key;
      }
      lastOkAt = Date.now();
      polls += 1;
      document.body.setAttribute("data-polls", String(polls));
      setLive("live");
    }).catch(function (err) {
      setLive("stale", String(err && err.message ? err.message : err));
    }).then(function () {
      updateTimes();
      schedule();
    });
  }

  function schedule() {
    if (timer === null) timer = setTimeout(poll, POLL_MS);
  }

  document.addEventListener("visibilitychange", function () {
    if (!document.hidden && timer !== null) {
      clearTimeout(timer);
      timer = null;
      poll();
    }
  });
  var filter = document.getElementById("filter");
  if (filter) filter.addEventListener("input", applyFilter);
  poll();
})();
