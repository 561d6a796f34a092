#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager and kubectl 1.20.2 from Debian's
# `kubernetes` source package into $E2E_CACHE, once. Later runs find them cached.
#
#   e2e/build-kubernetes.sh              the control plane's binaries (what cluster.sh uses)
#   e2e/build-kubernetes.sh --with-node  also kubelet and kube-scheduler, and the tree's
#                                        pause.c for the node's sandbox image (e2e/node.sh)
#
# Only what is missing from $KUBE_BIN is built; when only pause.c is missing, it alone is
# extracted from the source package.
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"

wanted=(kube-apiserver kube-controller-manager kubectl)
with_node=0
case "${1:-}" in
  "") ;;
  --with-node) with_node=1; wanted+=(kubelet kube-scheduler) ;;
  *) die "usage: $0 [--with-node]" ;;
esac
missing=()
for b in "${wanted[@]}"; do [ -x "$KUBE_BIN/$b" ] || missing+=("$b"); done
need_pause=0
[ "$with_node" = 1 ] && [ ! -s "$KUBE_PAUSE_SRC" ] && need_pause=1
[ "${#missing[@]}" -eq 0 ] && [ "$need_pause" = 0 ] && exit 0

"$here/install-deps.sh"

# apt-get source needs a deb-src line for bookworm (and its security suite, where the
# +deb12u1 upload lives).
src_list=/etc/apt/sources.list.d/mail-incident-operator-src.sources
if ! apt-get source --print-uris kubernetes >/dev/null 2>&1; then
  log "adding deb-src entries for bookworm in $src_list"
  as_root tee "$src_list" >/dev/null <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  as_root apt-get update -q >/dev/null
fi

work="$E2E_CACHE/kubernetes-src"
rm -rf "$work" && mkdir -p "$work"
log "downloading Debian's kubernetes source package (about 35 MB)"
(cd "$work" && apt-get source --download-only -q kubernetes >/dev/null)
orig=$(ls "$work"/kubernetes_*.orig.tar.* | head -n1)
[ -n "$orig" ] || die "no .orig tarball downloaded in $work"

gopath="$work/gopath"
tree="$gopath/src/k8s.io/kubernetes"
mkdir -p "$tree"
if [ "${#missing[@]}" -eq 0 ]; then
  # Binaries cached by an older run that kept no pause.c: that one file is enough.
  tar -xf "$orig" -C "$tree" --strip-components=1 --wildcards '*/build/pause/linux/pause.c'
else
  tar -xf "$orig" -C "$tree" --strip-components=1
fi
# The tree is deleted below; the node's pause image is built from this copy (e2e/node.sh),
# kept whenever the tree is at hand.
mkdir -p "$(dirname "$KUBE_PAUSE_SRC")"
install -m 0644 "$tree/build/pause/linux/pause.c" "$KUBE_PAUSE_SRC"

if [ "${#missing[@]}" -gt 0 ]; then
  # Known trap: vendored reflect2 1.0.1 crashes under Go >= 1.18 (reflect.mapiternext panics
  # in kubectl, the API server fails to encode maps). Use Debian's 1.0.2 sources instead.
  reflect2_src=/usr/share/gocode/src/github.com/modern-go/reflect2
  reflect2_dst="$tree/vendor/github.com/modern-go/reflect2"
  [ -d "$reflect2_src" ] || die "missing $reflect2_src: apt-get install golang-github-modern-go-reflect2-dev"
  rm -f "$reflect2_dst"/*.go "$reflect2_dst"/*.s
  cp "$reflect2_src"/*.go "$reflect2_dst"/
  cp "$reflect2_src"/*.s "$reflect2_dst"/ 2>/dev/null || true
  rm -f "$reflect2_dst"/*_test.go

  log "building ${missing[*]} (once; on 2 cores about 5 minutes for the control plane's three, 6 to 7 for kubelet and kube-scheduler built on their own)"
  started=$SECONDS
  export GOPATH="$gopath" GO111MODULE=off CGO_ENABLED=0 GOFLAGS= GOCACHE="$work/gocache"
  export PATH="/usr/lib/go-1.19/bin:$PATH"
  whats=""
  for b in "${missing[@]}"; do whats="$whats cmd/$b"; done
  (cd "$tree" && make WHAT="${whats# }" >"$work/build.log" 2>&1) \
    || { tail -n 40 "$work/build.log" >&2; die "kubernetes build failed, full log: $work/build.log"; }

  mkdir -p "$KUBE_BIN"
  for b in "${missing[@]}"; do
    install -m 0755 "$tree/_output/local/bin/linux/amd64/$b" "$KUBE_BIN/$b"
  done
  log "built ${missing[*]} into $KUBE_BIN in $((SECONDS - started)) s"
fi
rm -rf "$work"
