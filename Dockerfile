# syntax=docker/dockerfile:1
# stolon-rs container image: stolon-keeper, stolon-sentinel, stolon-proxy and stolonctl with
# PostgreSQL 15 from Debian, running as the unprivileged user `stolon` (uid/gid 1000).
#   docker build -t stolon-rs:0.1.0 .

# ---- build ---------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder

# protoc: the etcd v3 client's gRPC code is generated at build time. Debian's versions are not
# pinned: a stable release only carries security and point updates, and old ones leave the mirror.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates

# The cache mounts keep the registry and target dir between builds; the binaries are copied
# out of the target cache into /out so that the next stage can take them.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
        --bin stolon-keeper --bin stolon-sentinel --bin stolon-proxy --bin stolonctl \
 && mkdir -p /out \
 && cp target/release/stolon-keeper target/release/stolon-sentinel \
       target/release/stolon-proxy target/release/stolonctl /out/

# ---- runtime -------------------------------------------------------------------------------
FROM debian:bookworm-slim

# PostgreSQL 15 from Debian without its default cluster (the keeper runs initdb itself);
# tini as PID 1 reaps the postgres processes the keeper leaves behind when it restarts.
# hadolint ignore=DL3008
RUN mkdir -p /etc/postgresql-common \
 && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf \
 && apt-get update \
 && apt-get install -y --no-install-recommends postgresql-15 ca-certificates tini \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --gid 1000 stolon \
 && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/stolon --shell /bin/sh stolon \
 && mkdir -p /stolon-data \
 && chown stolon:stolon /stolon-data \
 && chmod 0700 /stolon-data

COPY --from=builder /out/stolon-keeper /out/stolon-sentinel /out/stolon-proxy /out/stolonctl /usr/local/bin/

ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8

USER 1000:1000
WORKDIR /home/stolon
VOLUME ["/stolon-data"]
EXPOSE 5432

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["stolonctl", "--help"]
