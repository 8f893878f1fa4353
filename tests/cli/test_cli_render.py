"""`lbsync render` and `lbsync check` as a user runs them: a subprocess, stdout, stderr, exit code.

The engine tests start lab backends (``--network host``, 127.0.0.1 ports) labelled with a
fresh run id, and every config selects ``lbsync-run=<id>``: other tests on the same engine
never show up in what these commands print. The rendered text is then loaded by hand into
the lab nginx (``nginx -t``, ``nginx -s reload``) to prove it routes by Host header.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.lab import DOCKER, Lab, free_port, try_http_get, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_LABEL = "lbsync-run"
HOSTILE_HOST = "evil.test;} server { listen 6666; } #"
NOWHERE = "unix:///nonexistent.sock"


# --------------------------------------------------------------------------- helpers


def cli_env(**overrides: str) -> dict[str, str]:
    """The user's environment without LBSYNC_CONFIG / DOCKER_HOST, lbsync importable."""
    env = dict(os.environ)
    env.pop("LBSYNC_CONFIG", None)
    env.pop("DOCKER_HOST", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(overrides)
    return env


def run_lbsync(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lbsync.cli", *args],
        cwd=cwd,
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert "Traceback" not in result.stdout, result.stdout


def target_yaml(name: str, output: Path, listen: int, run_id: str, **extra: str) -> str:
    lines = [
        f"  - name: {name}",
        f"    output: {output}",
        f'    listen: "127.0.0.1:{listen}"',
        f'    select: {{label: "{RUN_LABEL}={run_id}"}}',
        f'    proxy: {{label: "lbsync-render-proxy={run_id}"}}',
    ]
    lines += [f"    {key}: {value}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


def write_config(path: Path, *targets: str) -> Path:
    path.write_text("targets:\n" + "".join(targets))
    return path


@dataclass(frozen=True)
class Backend:
    cid: str
    name: str
    port: int
    host: str


@dataclass(frozen=True)
class Backends:
    run_id: str
    a: Backend
    b: Backend
    hostile: Backend | None


def start_backends(lab: Lab, *, hostile: bool = True) -> Backends:
    """Two labelled backends (a-ID.test, b-ID.test) and, with ``hostile``, one whose host
    label tries to inject nginx directives."""
    run_id = secrets.token_hex(6)

    def start(key: str, host: str) -> Backend:
        port = free_port()
        name = f"lbsync-render-{run_id}-{key}"
        labels = {
            RUN_LABEL: run_id,
            "lbsync.enable": "true",
            "lbsync.host": host,
            "lbsync.port": str(port),
        }
        return Backend(lab.run_backend(port, name=name, labels=labels), name, port, host)

    a = start("a", f"a-{run_id}.test")
    b = start("b", f"b-{run_id}.test")
    return Backends(run_id, a, b, start("evil", HOSTILE_HOST) if hostile else None)


def wait_answering(url: str, host: str | None, timeout: float = 10.0) -> tuple[int, str]:
    """The first answer of ``url`` (with that Host header) once anything answers."""

    def answer() -> tuple[int, str] | None:
        return try_http_get(url, host_header=host)

    found = wait_for(answer, timeout, 0.05, f"{url} answering for Host {host}")
    assert found is not None
    return found


def sections(stdout: str) -> list[tuple[str, str]]:
    """`# ==> PATH <==` headers and the text under each, in order."""
    found: list[tuple[str, list[str]]] = []
    for line in stdout.splitlines(keepends=True):
        if line.startswith("# ==> ") and line.rstrip("\n").endswith(" <=="):
            found.append((line[len("# ==> ") : -len(" <==\n")], []))
        else:
            assert found, f"text before the first header: {line!r}"
            found[-1][1].append(line)
    return [(path, "".join(body)) for path, body in found]


# --------------------------------------------------------------------------- render


@pytest.mark.engine
def test_render_prints_a_config_nginx_accepts_and_routes(lab: Lab, tmp_path: Path) -> None:
    backends = start_backends(lab)
    a, b, evil = backends.a, backends.b, backends.hostile
    assert evil is not None
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    output = out_dir / "lbsync.conf"
    listen = free_port()
    config = write_config(
        tmp_path / "lbsync.yaml", target_yaml("nginx", output, listen, backends.run_id)
    )

    result = run_lbsync(tmp_path, "render", "-c", str(config))

    assert result.returncode == 0, result.stderr
    assert_no_traceback(result)
    text = result.stdout
    assert f"server 127.0.0.1:{a.port} " in text
    assert f"server 127.0.0.1:{b.port} " in text
    assert f"server_name {a.host};" in text
    assert f"server_name {b.host};" in text
    # Nothing of the hostile container reaches the config.
    for needle in ("evil", "6666", f"127.0.0.1:{evil.port} ", evil.name):
        assert needle not in text, f"{needle!r} leaked into the config"
    # render writes nothing: no output file, no temp file beside it.
    assert not output.exists()
    assert list(out_dir.iterdir()) == []
    # The hostile label is reported on stderr, naming the container and the label.
    warnings = [line for line in result.stderr.splitlines() if evil.name in line]
    assert warnings, result.stderr
    assert any("lbsync.host" in line for line in warnings), result.stderr
    assert a.name not in result.stderr and b.name not in result.stderr

    # Load it into the lab nginx by hand: check, reload, and route by Host header.
    conf_dir = tmp_path / "conf.d"
    conf_dir.mkdir()
    nginx = lab.run_nginx(conf_dir, labels={RUN_LABEL: backends.run_id})
    for backend in (a, b):
        wait_answering(f"http://127.0.0.1:{backend.port}/", None)
    wait_for(
        lambda: lab.exec(nginx, "cat", "/run/nginx.pid", check=False).strip(),
        10,
        0.05,
        "nginx master pid file",
    )
    (conf_dir / "lbsync.conf").write_text(text)
    checked = subprocess.run(
        [DOCKER, "exec", nginx, "nginx", "-t"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    assert "test is successful" in checked.stderr
    lab.exec(nginx, "nginx", "-s", "reload")

    url = f"http://127.0.0.1:{listen}/"
    for backend in (a, b):
        status, body = wait_answering(url, backend.host)
        assert status == 200 and f"backend={backend.name} path=/" in body, (status, body)
    # Unknown hosts, the hostile one included, get the catch-all's 503.
    for host in ("unknown.test", "evil.test"):
        answer = try_http_get(url, host_header=host)
        assert answer is not None and answer[0] == 503, (host, answer)


@pytest.mark.engine
def test_render_several_targets_and_target_option(lab: Lab, tmp_path: Path) -> None:
    backends = start_backends(lab, hostile=False)
    out_one = tmp_path / "out" / "one.conf"
    out_two = tmp_path / "out" / "two.conf"
    config = write_config(
        tmp_path / "lbsync.yaml",
        target_yaml("one", out_one, free_port(), backends.run_id),
        target_yaml("two", out_two, free_port(), backends.run_id, default_server="false"),
    )

    every = run_lbsync(tmp_path, "render", "-c", str(config))
    assert every.returncode == 0, every.stderr
    assert_no_traceback(every)
    found = sections(every.stdout)
    assert [path for path, _ in found] == [str(out_one), str(out_two)]
    for _, body in found:
        assert body.startswith("# Generated by lbsync"), body[:200]
        assert f"server 127.0.0.1:{backends.a.port} " in body
        assert f"server 127.0.0.1:{backends.b.port} " in body
    assert "default_server" in found[0][1]
    assert "default_server" not in found[1][1]

    only_two = run_lbsync(tmp_path, "render", "-c", str(config), "--target", "two")
    assert only_two.returncode == 0, only_two.stderr
    assert_no_traceback(only_two)
    assert "# ==>" not in only_two.stdout
    assert only_two.stdout == found[1][1]

    only_one = run_lbsync(tmp_path, "render", "-c", str(config), "--target", "one")
    assert only_one.returncode == 0, only_one.stderr
    assert only_one.stdout == found[0][1]

    unknown = run_lbsync(tmp_path, "render", "-c", str(config), "--target", "three")
    assert unknown.returncode == 2, unknown.stderr
    assert_no_traceback(unknown)
    assert unknown.stdout == ""
    lines = unknown.stderr.splitlines()
    assert len(lines) == 1, unknown.stderr
    assert "three" in lines[0] and "one" in lines[0] and "two" in lines[0], lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.engine
def test_render_diff_against_the_file_on_disk(lab: Lab, tmp_path: Path) -> None:
    backends = start_backends(lab, hostile=False)
    output = tmp_path / "lbsync.conf"
    config = write_config(
        tmp_path / "lbsync.yaml", target_yaml("nginx", output, free_port(), backends.run_id)
    )
    rendered = run_lbsync(tmp_path, "render", "-c", str(config))
    assert rendered.returncode == 0, rendered.stderr
    output.write_text(rendered.stdout)

    same = run_lbsync(tmp_path, "render", "-c", str(config), "--diff")
    assert same.returncode == 0, same.stderr
    assert_no_traceback(same)
    assert same.stdout == ""

    wanted = f"    server 127.0.0.1:{backends.a.port} weight=1;"
    assert wanted + "\n" in rendered.stdout
    edited = rendered.stdout.replace(wanted, f"    server 127.0.0.1:{backends.a.port} weight=7;")
    output.write_text(edited)

    changed = run_lbsync(tmp_path, "render", "-c", str(config), "--diff")
    assert changed.returncode in (0, 1), changed.stderr
    assert_no_traceback(changed)
    lines = changed.stdout.splitlines()
    assert lines[0].startswith("--- ") and str(output) in lines[0], lines[:3]
    assert lines[1].startswith("+++ "), lines[:3]
    assert lines[2].startswith("@@ "), lines[:3]
    removed = [line[1:] for line in lines[2:] if line.startswith("-")]
    added = [line[1:] for line in lines[2:] if line.startswith("+")]
    assert removed == [f"    server 127.0.0.1:{backends.a.port} weight=7;"]
    assert added == [wanted]
    assert all(line[:1] in (" ", "-", "+", "@") for line in lines[2:]), lines
    # --diff reads the file; it never writes it.
    assert output.read_text() == edited


@pytest.mark.engine
def test_render_template_error_is_one_line_exit_2(lab: Lab, tmp_path: Path) -> None:
    # A template that compiles but fails on the engine's data: one line naming the target,
    # the template and its line, exit 2, no traceback (issue #17: it ended in a traceback).
    backends = start_backends(lab, hostile=False)
    template = tmp_path / "mine.conf.j2"
    template.write_text("# mine\n{% for h in hosts %}\nserver_name {{ h.nmae }};\n{% endfor %}\n")
    output = tmp_path / "out" / "lbsync.conf"
    config = write_config(
        tmp_path / "lbsync.yaml",
        target_yaml("mine", output, free_port(), backends.run_id, template="mine.conf.j2"),
    )
    assert run_lbsync(tmp_path, "check", "-c", str(config)).returncode == 0  # it compiles

    result = run_lbsync(tmp_path, "render", "-c", str(config))
    assert result.returncode == 2, result.stderr
    assert_no_traceback(result)
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("lbsync: target mine: template "), line
    assert str(template) in line and "line 3" in line and "nmae" in line, line
    assert not output.exists()


def test_render_engine_unreachable(tmp_path: Path) -> None:
    output = tmp_path / "out" / "lbsync.conf"
    config = write_config(tmp_path / "lbsync.yaml", target_yaml("nginx", output, 8080, "none"))
    result = run_lbsync(tmp_path, "render", "-c", str(config), DOCKER_HOST=NOWHERE)
    assert result.returncode == 1, result.stderr
    assert_no_traceback(result)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "/nonexistent.sock" in lines[0]
    assert not output.exists()


#: Reaches for Python inside the loop over hosts: compiles, and `check` (no containers) never
#: runs that line; a render with a routed host does.
ESCAPE_IN_A_HOST = """\
# lbsync test template
{% for h in hosts %}
server_name {{ h.name | nginx_quote }};
{{ cycler.__init__.__globals__.os.system('touch MARKER') }}
{% endfor %}
"""


@pytest.mark.engine
def test_render_a_template_reaching_python_is_one_line_exit_2(lab: Lab, tmp_path: Path) -> None:
    backends = start_backends(lab, hostile=False)
    template = tmp_path / "escape.conf.j2"
    template.write_text(ESCAPE_IN_A_HOST)
    output = tmp_path / "out" / "lbsync.conf"
    config = write_config(
        tmp_path / "lbsync.yaml",
        target_yaml("nginx", output, free_port(), backends.run_id, template=template.name),
    )

    result = run_lbsync(tmp_path, "render", "-c", str(config))

    assert result.returncode == 2, result.stderr
    assert_no_traceback(result)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"lbsync: target nginx: template {template}, line 4: ")
    assert "refused by the sandbox" in lines[0] and "__init__" in lines[0]
    assert not (tmp_path / "MARKER").exists()
    assert not output.exists()


# --------------------------------------------------------------------------- check


def test_check_good_config(tmp_path: Path) -> None:
    template = tmp_path / "mine.conf.j2"
    template.write_text(
        "{% for u in upstreams if u.servers %}\n"
        "upstream {{ u.name | nginx_quote }} { server 127.0.0.1:1; }\n"
        "{% endfor %}\n"
    )
    config = write_config(
        tmp_path / "good.yaml",
        target_yaml("nginx", tmp_path / "out" / "a.conf", 8080, "x"),
        target_yaml("mine", tmp_path / "out" / "b.conf", 8081, "x", template="mine.conf.j2"),
    )
    # check needs no engine.
    result = run_lbsync(tmp_path, "check", "-c", str(config), DOCKER_HOST=NOWHERE)
    assert result.returncode == 0, result.stderr
    assert_no_traceback(result)
    assert result.stderr == ""
    assert not (tmp_path / "out").exists()


def test_check_bad_key_names_its_path(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "targets:\n  - name: nginx\n    output: out/lbsync.conf\n    reloadd: signal\n"
    )
    result = run_lbsync(tmp_path, "check", "-c", str(config))
    assert result.returncode == 2, result.stderr
    assert_no_traceback(result)
    assert "targets[0].reloadd" in result.stderr
    assert str(config) in result.stderr


def test_check_template_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    template = tmp_path / "broken.conf.j2"
    template.write_text(
        "# line 1\n"
        "{% for u in upstreams %}\n"
        "upstream {{ u.name }\n"  # line 3: the unclosed expression
        "{% endfor %}\n"
    )
    config = write_config(
        tmp_path / "lbsync.yaml",
        target_yaml("nginx", tmp_path / "out" / "a.conf", 8080, "x", template="broken.conf.j2"),
    )
    result = run_lbsync(tmp_path, "check", "-c", str(config))
    assert result.returncode == 2, result.stderr
    assert_no_traceback(result)
    assert result.stdout == ""
    assert str(template) in result.stderr
    assert "line 3" in result.stderr


@pytest.mark.parametrize(
    ("line", "says"),
    [
        pytest.param(
            "{{ cycler.__init__.__globals__.os.system('touch MARKER') }}",
            "refused by the sandbox: access to attribute '__init__'",
            id="sandbox",
        ),
        pytest.param(
            "{{ target.output.write_text('x') }}",
            "refused by the sandbox: access to attribute 'write_text'",
            id="path-io",
        ),
        pytest.param("{{ vars.missnig }}", "missnig", id="undefined"),
    ],
)
def test_check_renders_each_template_with_no_containers(
    tmp_path: Path, line: str, says: str
) -> None:
    template = tmp_path / "mine.conf.j2"
    template.write_text(f"# line 1\n{line}\n")
    output = tmp_path / "out" / "b.conf"
    config = write_config(
        tmp_path / "lbsync.yaml",
        target_yaml("nginx", tmp_path / "out" / "a.conf", 8080, "x"),
        target_yaml("mine", output, 8081, "x", template=template.name),
    )
    result = run_lbsync(tmp_path, "check", "-c", str(config), DOCKER_HOST=NOWHERE)
    assert result.returncode == 2, result.stderr
    assert_no_traceback(result)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"lbsync: target mine: template {template}, line 2: ")
    assert says in lines[0]
    assert lines[0].endswith("(rendered with no containers)")
    assert not (tmp_path / "MARKER").exists()
    assert not (tmp_path / "out").exists()
