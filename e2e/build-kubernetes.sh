#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager and kubectl 1.20.2 from Debian's
# `kubernetes` source package into $E2E_CACHE, once. Later runs find them cached.
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"

wanted=(kube-apiserver kube-controller-manager kubectl)
have_all=1
for b in "${wanted[@]}"; do [ -x "$KUBE_BIN/$b" ] || have_all=0; done
[ "$have_all" = 1 ] && exit 0

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
log "downloading Debian's kubernetes source package (about 30 MB)"
(cd "$work" && apt-get source --download-only -q kubernetes >/dev/null)
orig=$(ls "$work"/kubernetes_*.orig.tar.* | head -n1)
[ -n "$orig" ] || die "no .orig tarball downloaded in $work"

gopath="$work/gopath"
tree="$gopath/src/k8s.io/kubernetes"
mkdir -p "$tree"
tar -xf "$orig" -C "$tree" --strip-components=1

# Known trap: vendored reflect2 1.0.1 crashes under Go >= 1.18 (reflect.mapiternext panics
# in kubectl, the API server fails to encode maps). Use Debian's 1.0.2 sources instead.
reflect2_src=/usr/share/gocode/src/github.com/modern-go/reflect2
reflect2_dst="$tree/vendor/github.com/modern-go/reflect2"
[ -d "$reflect2_src" ] || die "missing $reflect2_src: apt-get install golang-github-modern-go-reflect2-dev"
rm -f "$reflect2_dst"/*.go "$reflect2_dst"/*.s
cp "$reflect2_src"/*.go "$reflect2_dst"/
cp "$reflect2_src"/*.s "$reflect2_dst"/ 2>/dev/null || true
rm -f "$reflect2_dst"/*_test.go

log "building ${wanted[*]} (about 5 minutes on 2 cores, once)"
export GOPATH="$gopath" GO111MODULE=off CGO_ENABLED=0 GOFLAGS= GOCACHE="$work/gocache"
export PATH="/usr/lib/go-1.19/bin:$PATH"
whats=""
for b in "${wanted[@]}"; do whats="$whats cmd/$b"; done
(cd "$tree" && make WHAT="${whats# }" >"$work/build.log" 2>&1) \
  || { tail -n 40 "$work/build.log" >&2; die "kubernetes build failed, full log: $work/build.log"; }

mkdir -p "$KUBE_BIN"
for b in "${wanted[@]}"; do
  install -m 0755 "$tree/_output/local/bin/linux/amd64/$b" "$KUBE_BIN/$b"
done
rm -rf "$work"
log "built into $KUBE_BIN"
