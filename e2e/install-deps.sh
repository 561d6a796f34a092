#!/usr/bin/env bash
# Installs, with apt, every Debian package the tests and the demo use, once.
# Idempotent and quiet when everything is already there.
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"

packages=(
  etcd-server                           # the API server's store
  golang-1.19-go rsync                  # to build kube-apiserver/kubectl from Debian's source
  golang-github-modern-go-reflect2-dev  # reflect2 1.0.2, replaces the vendored 1.0.1 (Go >= 1.18 crash)
  openssl                               # service-account key pair and serving certificate
  prometheus                            # promtool (rule tests), and the Prometheus the dashboard is proven on
  lua5.1                                # Argo CD's health and action scripts run on Lua 5.1
  python3 python3-venv                  # Helm's engine (helm-python-sdk) for the chart tests
  postfix                               # a real MTA the agent's rendering is proven on
  swaks                                 # to talk SMTP to it by hand after `make demo`
  tmux                                  # the plugin tests look at its output in a terminal
  zsh fish                              # the plugin's completion is tried in each shell it ships for
  libdb5.3 libgnutls-dane0 libgnutls30 libidn12 libidn2-0 libnsl2 libpcre2-8-0 perl
                                        # what Exim's binary links against (see below)
  curl ca-certificates
  # The node (e2e/node.sh), only started by `cluster.sh up --with-node`:
  containerd runc                       # the container runtime the kubelet drives (CRI)
  containernetworking-plugins           # bridge, host-local, loopback: pods' own netns
  buildah                               # builds the pause image and test images, with no daemon
  debootstrap                           # a Debian rootfs for images that need one (FROM bookworm)
  gcc libc6-dev                         # the pause binary, static, from the kubernetes tree
  socat                                 # forwards the bridge's gateway to the API server on loopback
  iproute2 util-linux                   # the bridge (ip), findmnt and nsenter
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing with apt: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -q >/dev/null
  as_root apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  # Where the package scripts could start Debian's own Postfix, stop it: tests and the
  # demo run private instances on loopback ports only.
  if as_root postfix status >/dev/null 2>&1; then as_root postfix stop >/dev/null 2>&1 || true; fi
  # Debian's containerd ships a systemd unit only; where it runs, it is left alone: the
  # node runs a containerd of its own, on its own socket, root and state.
fi

# Exim: exim4-daemon-light conflicts with postfix (both are the mail-transport-agent), so
# its package is unpacked into the cache instead of installed, and its compiled-in user
# is created as the package's scripts would.
exim_root="$E2E_CACHE/exim4/root"
if [ ! -x "$exim_root/usr/sbin/exim4" ]; then
  log "unpacking Debian's exim4-daemon-light into $exim_root"
  debs="$(mktemp -d)"
  (cd "$debs" && apt-get download exim4-daemon-light >/dev/null 2>&1) || die "apt-get download exim4-daemon-light failed"
  mkdir -p "$exim_root"
  dpkg-deb -x "$debs"/exim4-daemon-light_*.deb "$exim_root"
  rm -rf "$debs"
fi
if ! getent passwd Debian-exim >/dev/null; then
  as_root useradd --system --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin Debian-exim
fi

# Helm's engine and a YAML parser, in a virtualenv of their own (e2e/requirements.txt),
# rebuilt when the requirements change.
python_env="$E2E_CACHE/python"
if ! cmp -s "$here/requirements.txt" "$python_env/requirements.txt"; then
  log "installing e2e/requirements.txt into $python_env"
  rm -rf "$python_env"
  /usr/bin/python3 -m venv "$python_env" || die "python3 -m venv failed (apt-get install python3-venv)"
  "$python_env/bin/pip" install -q --disable-pip-version-check -r "$here/requirements.txt" \
    || die "pip install -r e2e/requirements.txt failed"
  cp "$here/requirements.txt" "$python_env/requirements.txt"
fi
