#!/usr/bin/env bash
# Builds the images a real node runs, with buildah from the repository's own Dockerfiles,
# and prints the path of each as a docker-archive (for `e2e/node.sh import`):
#
#   mail-incident-operator:0.1.0          Dockerfile (the static release binary)
#   mail-incident-example/postfix:0.1.0   examples/images/postfix (a site's Postfix)
#   mail-incident-example/exim:0.1.0      examples/images/exim (a site's Exim)
#
# No registry is reachable, so `FROM debian:bookworm-slim` is made here once: a
# `debootstrap --variant=minbase` rootfs committed under that name. Each archive is cached
# under $E2E_CACHE/images, named by a hash of everything it is built from (Dockerfile,
# context, base image), so an unchanged image is never built twice.
#
#   e2e/images.sh build    build what is missing; print the archives' paths
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"
repo="$(cd "$here/.." && pwd)"

images="$E2E_CACHE/images"
base_name=docker.io/library/debian:bookworm-slim
binary=target/x86_64-unknown-linux-gnu/release/mail-incident-operator

base_image() {
  if buildah_e2e inspect --type image "$base_name" >/dev/null 2>&1; then return; fi
  command -v debootstrap >/dev/null || die "debootstrap not found: apt-get install debootstrap (e2e/install-deps.sh does)"
  local rootfs
  rootfs="$(mktemp -d)"
  log "making $base_name with debootstrap --variant=minbase (about 2 minutes, once)"
  debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >"$rootfs.log" 2>&1 \
    || { tail -n 20 "$rootfs.log" >&2; rm -rf "$rootfs" "$rootfs.log"; die "debootstrap failed"; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs.log"
  local container
  container=$(buildah_e2e from scratch)
  buildah_e2e copy "$container" "$rootfs" / >/dev/null
  buildah_e2e config --cmd /bin/bash "$container"
  buildah_e2e commit --quiet "$container" "$base_name" >/dev/null
  buildah_e2e rm "$container" >/dev/null
  rm -rf "$rootfs"
}

# The hash of a build's inputs: the base image's id, then each file of the context.
inputs_hash() { # context, files...
  local context=$1; shift
  {
    buildah_e2e inspect --type image --format '{{.FromImageID}}' "$base_name"
    (cd "$context" && sha256sum "$@")
  } | sha256sum | cut -c1-16
}

build() { # name:tag, context, files of the context the image is built from...
  local name=$1 context=$2; shift 2
  local archive
  archive="$images/${name//[\/:]/-}-$(inputs_hash "$context" "$@").tar"
  if [ ! -f "$archive" ]; then
    log "building $name"
    mkdir -p "$images"
    rm -f "$images/${name//[\/:]/-}"-*.tar # earlier builds of it
    buildah_e2e bud --quiet --pull-never --layers -t "$name" "$context" >/dev/null \
      || die "buildah bud of $name failed"
    buildah_e2e push --quiet "$name" "docker-archive:$archive.part:$name" >/dev/null
    mv "$archive.part" "$archive"
    log "$name: $(du -m "$archive" | cut -f1) MB as a docker-archive"
  fi
  echo "$archive"
}

case "${1:-}" in
  build)
    "$here/install-deps.sh"
    # One build at a time on the shared store and archives (a demo beside a test run).
    mkdir -p "$images"
    exec 9>"$images/.lock"
    flock 9
    command -v buildah >/dev/null || die "buildah not found: apt-get install buildah (e2e/install-deps.sh does)"
    base_image
    log "building the operator's static release binary"
    (cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static" \
      cargo build --locked --quiet --release --target x86_64-unknown-linux-gnu)
    build mail-incident-operator:0.1.0 "$repo" Dockerfile .dockerignore "$binary"
    build mail-incident-example/postfix:0.1.0 "$repo/examples/images/postfix" Dockerfile main.cf
    build mail-incident-example/exim:0.1.0 "$repo/examples/images/exim" Dockerfile exim4.conf
    ;;
  *) die "usage: $0 build" ;;
esac
