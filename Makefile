# mail-incident-operator: `make demo` shows it working, `make test` runs every test.
# Both install what they need (Debian packages, a Kubernetes 1.20 control plane built
# from Debian's source package into ~/.cache) on first use.

CARGO ?= cargo
OPERATOR := target/debug/mail-incident-operator

PREFIX ?=
# Where cargo builds (CARGO_TARGET_DIR when set).
BUILD_DIR := $(or $(CARGO_TARGET_DIR),target)/debug

.PHONY: all build plugin crds fmt clippy unit artefacts e2e e2e-node images bench test demo cluster-up cluster-down clean

all: build

## Builds the operator and the plugin (target/debug/kubectl-mail_incident), and puts the
## plugin's completion shim next to it.
build:
	$(CARGO) build --locked
	install -m 0755 plugins/kubectl_complete-mail_incident $(BUILD_DIR)/

## `kubectl mail-incident`: built as by `make build`; with PREFIX (make plugin
## PREFIX=~/.local), also installed with its completion shim in PREFIX/bin.
plugin:
	$(CARGO) build --locked --bin kubectl-mail_incident
	install -m 0755 plugins/kubectl_complete-mail_incident $(BUILD_DIR)/
	$(if $(PREFIX),install -d $(PREFIX)/bin && install -m 0755 $(BUILD_DIR)/kubectl-mail_incident plugins/kubectl_complete-mail_incident $(PREFIX)/bin/)

## Regenerate the committed CRD from the Rust types.
crds: build
	$(OPERATOR) crd > crds/mailincidents.mailops.dev.yaml
	cp crds/mailincidents.mailops.dev.yaml charts/mail-incident-operator/files/crds/

fmt:
	$(CARGO) fmt --all --check

clippy:
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

## Unit tests: pure logic, API validation, CRD drift. No cluster.
unit:
	$(CARGO) test --locked --lib --bins

## What SREs' tools read, tested by those tools: the Helm chart (Helm's engine), the alert
## rules (promtool), the dashboard's structure, Argo CD's health and actions (Lua 5.1).
artefacts:
	e2e/run-artefact-tests.sh

## End-to-end tests against a real API server (local unless E2E_KUBECONFIG is set).
e2e:
	e2e/run-tests.sh

## End-to-end tests on a real node (kubelet, containerd): the operator and the example
## MTAs as pods from the images the Dockerfiles build.
e2e-node:
	e2e/run-node-tests.sh

## The operator's image and the example MTA images, with buildah, as docker-archives.
images:
	e2e/images.sh build

## The fleet benchmark (10, 100, 1000, 5000 targets) and the RCPT latency benchmark,
## against a local control plane of their own.
bench:
	e2e/bench.sh

## Everything CI runs.
test: fmt clippy unit artefacts e2e e2e-node

## A local control plane, the operator, sample MTA workloads and an incident.
demo:
	e2e/demo.sh

cluster-up:
	e2e/cluster.sh up

cluster-down:
	e2e/cluster.sh down

clean:
	e2e/cluster.sh down
	$(CARGO) clean
