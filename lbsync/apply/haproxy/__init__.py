"""HAProxy sockets (asyncio, stdlib): `socket` (one exchange), `master` (the master CLI and
reloads through it), `runtime` (the runtime API: servers in and out of slots).

`master_command` talks to the master CLI (`haproxy -W -S PATH`),
`master_reload` reloads through it and confirms the result with `show proc`;
`runtime_command` / `apply_runtime` talk to a `stats socket ... level admin`. Every failure is
an `HAProxySocketError` naming the socket and the command.

HAProxy 2.6 facts these rely on (Debian 12's 2.6.12, checked against the real binary):

- The master CLI answers `reload` by closing the connection with no text: the master
  re-executes itself and refuses connections for some tens of milliseconds, then `show proc`
  answers again. Only `show proc` tells what happened:

      #<PID>          <type>          <reloads>       <uptime>        <version>
      23094           master          2 [failed: 1]   0d00h00m04s     2.6.12-1+deb12u4
      # workers
      23322           worker          1               0d00h00m01s     2.6.12-1+deb12u4
      # old workers
      23108           worker          2               0d00h00m09s     2.6.12-1+deb12u4
      # programs

  The master's `reloads` counts every reload, `failed` the failed ones since the last success
  (it drops back to 0 after a good reload). A worker's `reloads` counts the reloads it has
  lived through (a new worker shows 0). `# old workers` lists workers still finishing
  connections after a reload; it is absent when there are none. A refused config keeps the
  worker and increments `reloads` and `failed`; a good one forks a new worker.
  (HAProxy 2.7+ answers `reload` with `Success=0|1` and the startup log; that is read too.)
- The stats socket answers each command with its text and an empty line: `set weight` and
  `set server ... state` print nothing on success, `set server ... addr` prints
  `IP changed from 'A' to 'B', port changed from '1' to '8080' by 'stats socket command'`
  (or `no need to change the addr`/`the port`); errors are text (`No such server.`, `No such
  backend.`, `Invalid addr ...`, `Absolute weight can only be between 0 and 256 inclusive.`).
  Commands on one line separated by `;` run in order, each answer ended by an empty line, and
  an error does not stop the ones after it. A port above 65535 is silently wrapped, so ports
  are checked here.
- A non-interactive connection runs one line and closes, so a command is sent with "\\n" and
  the socket half-closed (SHUT_WR); the answer is everything up to EOF.
"""
