#!/usr/bin/env bash
# A private Exim from Debian's exim4-daemon-light (unpacked by e2e/install-deps.sh), on a
# loopback port, with its own configuration, spool, log and Maildir under
# /tmp/mail-incident-operator-exim/NAME. Its configuration is the example image's
# (examples/images/exim/exim4.conf), with this instance's paths and port.
#
#   e2e/exim-instance.sh start NAME PORT   start it; prints its directory
#   e2e/exim-instance.sh stop NAME         stop it and every process it started
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"

base=/tmp/mail-incident-operator-exim
name="${2:?usage: $0 start|stop NAME [PORT]}"
root="$base/$name"
# The daemon runs as Debian-exim and re-executes exim_path on SIGHUP: a copy readable by
# it (the cache is under a private home), without the setuid bit (we are root already).
exim="$base/.bin/exim4"

start() {
  local port="${1:?a port is needed}"
  local cached="$E2E_CACHE/exim4/root/usr/sbin/exim4"
  [ -x "$cached" ] || die "$cached not found: e2e/install-deps.sh unpacks it"
  getent passwd Debian-exim >/dev/null || die "no Debian-exim user: e2e/install-deps.sh creates it"
  mkdir -p "$base/.bin" && chmod 0755 "$base" "$base/.bin"
  cmp -s "$cached" "$exim" || install -m 0755 "$cached" "$exim"
  stop
  rm -rf "$root" && mkdir -p "$root/spool" "$root/log" "$root/Maildir" "$root/Bounces" "$root/mail-incident"
  local d
  for d in pec.local.test storage.local.test a.storage.local.test b.storage.local.test; do mkdir -p "$root/domains/$d"; done
  chmod 0755 "$root" "$root/mail-incident"
  # The example image's configuration, with this instance's paths and port, and more
  # local domains for scoped incidents (pec.local.test, storage.local.test and two of its
  # subdomains), each delivered to a Maildir of its own, domains/DOMAIN/Maildir, so that
  # a test can break one domain's store. $domain_data, not $domain: Exim refuses a
  # tainted (sender-given) path.
  sed -e "s|/etc/exim4/mail-incident|$root/mail-incident|g" \
    -e "s|^domainlist local_domains = .*|domainlist local_domains = local.test : pec.local.test : storage.local.test : a.storage.local.test : b.storage.local.test|" \
    -e 's|^  directory = /var/mail/vhosts/Maildir$|  directory = /var/mail/vhosts/${if eq{$domain_data}{local.test}{Maildir}{domains/$domain_data/Maildir}}|' \
    -e "s|^exim_path = .*|exim_path = $exim|" \
    -e "s|/var/spool/exim4|$root/spool|" -e "s|/var/log/exim4|$root/log|" \
    -e "s|/run/exim4/exim.pid|$root/exim.pid|" \
    -e "s|^local_interfaces = .*|local_interfaces = 127.0.0.1|" \
    -e "s|^daemon_smtp_ports = .*|daemon_smtp_ports = $port|" \
    -e "s|/var/mail/vhosts|$root|g" \
    "$here/../examples/images/exim/exim4.conf" >"$root/exim.conf"
  ! grep -v '^#' "$root/exim.conf" | grep -qE '/etc/exim4|/var/spool|/var/mail|/run/exim4' \
    || die "examples/images/exim/exim4.conf has a path this script does not redirect"
  # Exim trusts a -C configuration only if root owns it and nobody else may write it.
  chmod 0644 "$root/exim.conf"
  chown -R Debian-exim:Debian-exim "$root/spool" "$root/log" "$root/Maildir" "$root/Bounces" "$root/domains"
  "$exim" -C "$root/exim.conf" -bV >/dev/null 2>"$root/log/check" || { cat "$root/log/check" >&2; die "exim.conf does not check"; }
  # -bdf: the daemon stays the process started here; -q10s: a queue run every 10 s
  # (EXIM_QUEUE_INTERVAL; the release benchmark runs Debian's default, 30m).
  setsid "$exim" -C "$root/exim.conf" -bdf "-q${EXIM_QUEUE_INTERVAL:-10s}" </dev/null >>"$root/log/daemon.out" 2>&1 &
  for _ in $(seq 100); do
    if [ -s "$root/exim.pid" ] && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$root"
      return
    fi
    sleep 0.1
  done
  cat "$root/log/daemon.out" "$root/log/paniclog" >&2 2>/dev/null || true
  die "exim is not listening on 127.0.0.1:$port"
}

# Every process of this instance: the daemon, its children, and queue runners the agent
# started (all have this instance's configuration on their command line).
pids() {
  local f
  for f in /proc/[0-9]*/cmdline; do
    tr '\0' '\n' <"$f" 2>/dev/null | grep -qxF -- "$root/exim.conf" && { f="${f#/proc/}"; echo "${f%/cmdline}"; }
  done
  return 0
}

stop() {
  local left
  for _ in $(seq 50); do
    left="$(pids)"
    [ -z "$left" ] && return 0
    kill $left 2>/dev/null || true
    sleep 0.1
  done
  left="$(pids)"
  [ -z "$left" ] || kill -9 $left 2>/dev/null || true
}

case "${1:-}" in
  start) start "${3:-}" ;;
  stop) stop ;;
  *) die "usage: $0 start NAME PORT | stop NAME" ;;
esac
