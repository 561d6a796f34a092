#!/usr/bin/env bash
# A private Postfix instance from Debian's package, on a loopback port, with its own
# configuration, queue, log and mailbox store under /tmp/mail-incident-operator-postfix/NAME.
# Mail to any address @e2e.test is delivered by the `virtual` transport to the Maildir
# NAME/mailboxes/user/: the mailbox storage that incidents hold mail from. For scoped
# incidents, mail to pec.e2e.test, storage.e2e.test and its subdomains a. and b. goes to
# a Maildir per domain, NAME/mailboxes/DOMAIN/, so that a test can break one domain's store.
#
# Its recipient restrictions ask the agent's policy service on POLICY_PORT first, as a
# site's main.cf does (see docs/postfix.md); with no agent there, Postfix goes on
# as if the service said DUNNO.
#
#   e2e/postfix-instance.sh start NAME PORT POLICY_PORT
#                                             start it; prints its configuration directory
#   e2e/postfix-instance.sh stop NAME         stop it
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"

base=/tmp/mail-incident-operator-postfix
name="${2:?usage: $0 start|stop NAME [PORT POLICY_PORT]}"
root="$base/$name"
conf="$root/conf"

start() {
  local port="${1:?a port is needed}" policy_port="${2:?a policy service port is needed}"
  command -v postfix >/dev/null || die "postfix not found: apt-get install postfix (e2e/install-deps.sh does)"
  local scoped="pec.e2e.test storage.e2e.test a.storage.e2e.test b.storage.e2e.test" d
  rm -rf "$root" && mkdir -p "$conf" "$root/queue" "$root/data" "$root/log" "$root/mailboxes"
  for d in $scoped; do mkdir -p "$root/mailboxes/$d"; done
  # Until its own logger runs, Postfix reports fatal errors to syslog only (absent here):
  # the log file and its prefix come first.
  cat >"$conf/main.cf" <<MAIN
compatibility_level = 3.6
queue_directory = $root/queue
data_directory = $root/data
maillog_file_prefixes = /var, /dev/stdout, $base
maillog_file = $root/log/maillog
myhostname = mx.e2e.test
mydestination =
virtual_mailbox_domains = e2e.test $scoped
virtual_mailbox_base = $root/mailboxes
virtual_mailbox_maps = inline:{ @e2e.test=user/ $(for d in $scoped; do printf '@%s=%s/ ' "$d" "$d"; done)}
virtual_uid_maps = static:$(id -u postfix)
virtual_gid_maps = static:$(id -g postfix)
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
smtpd_recipient_restrictions = check_policy_service { inet:127.0.0.1:$policy_port, default_action=DUNNO }, permit_mynetworks, reject_unauth_destination
maximal_queue_lifetime = 3d
MAIN
  sed "s/^smtp \+inet .* smtpd$/127.0.0.1:$port inet n - n - - smtpd/" /etc/postfix/master.cf >"$conf/master.cf"
  chown -R postfix "$root/data" "$root/mailboxes"
  # postfix -c accepts only directories the default main.cf lists.
  local listed
  listed=$(postconf -h alternate_config_directories)
  case " ${listed//,/ } " in
    *" $conf "*) ;;
    *) postconf -e "alternate_config_directories = ${listed:+$listed }$conf" ;;
  esac
  postfix -c "$conf" start >/dev/null 2>&1 || { cat "$root/log/maillog" >&2; die "postfix did not start"; }
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && { echo "$conf"; return; }
    sleep 0.1
  done
  die "postfix is not listening on 127.0.0.1:$port"
}

case "${1:-}" in
  start) start "${3:-}" "${4:-}" ;;
  stop) [ -d "$conf" ] && postfix -c "$conf" stop >/dev/null 2>&1 || true ;;
  *) die "usage: $0 start NAME PORT POLICY_PORT | stop NAME" ;;
esac
