# The operator's image: its release binary, linked statically (glibc included), the CA
# certificates, and nothing else (no shell, no package manager); it runs as 65532.
# The same binary is the MTA agent: an init container copies it into the MTA's pod (see
# examples/postfix-with-agent.yaml). `make image` builds the binary, then this:
#   RUSTFLAGS="-C target-feature=+crt-static" \
#     cargo build --locked --release --target x86_64-unknown-linux-gnu
#   docker build -t mail-incident-operator:0.1.0 .
FROM debian:bookworm-slim AS certificates
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

FROM scratch
COPY --from=certificates /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
# Static: it runs in this empty image, and the agent's copy runs in any MTA image.
COPY target/x86_64-unknown-linux-gnu/release/mail-incident-operator /mail-incident-operator
USER 65532:65532
ENTRYPOINT ["/mail-incident-operator"]
