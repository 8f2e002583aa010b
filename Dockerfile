# stolon-rs container image: stolon-keeper, stolon-sentinel, stolon-proxy and stolonctl with
# PostgreSQL 15 from Debian, running as the unprivileged user `stolon` (uid/gid 1000).
#
#   docker build -t stolon-rs:0.1.0 .
#
# compiles the binaries from source in the public rust image on the public debian:bookworm-slim.
# Build arguments:
#   BASE_IMAGE  the Debian 12 image the runtime starts from (default debian:bookworm-slim;
#               scripts/image.sh passes a base it makes itself with debootstrap).
#   RUST_IMAGE  the image that compiles the binaries (default rust:1-bookworm).
# Targets besides the default:
#   prebuilt    the same runtime with the four binaries taken from `bin/` of the build context,
#               compiled beforehand on a Debian 12 host (scripts/image.sh --binaries DIR lays such
#               a context out); it works with the legacy builder too, which builds every stage
#               before the target: hence the order of the stages.
#   etcd        a small etcd v3 image (etcd-server from Debian) on the same base, for tests.

ARG BASE_IMAGE=debian:bookworm-slim
ARG RUST_IMAGE=rust:1-bookworm

# ---- etcd (tests) ---------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS etcd

# Debian's versions are not pinned: a stable release only carries security and point updates,
# and old ones leave the mirror.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends etcd-server \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb

USER 65534:65534
ENTRYPOINT ["/usr/bin/etcd"]

# ---- runtime without the binaries ---------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime

# PostgreSQL 15 from Debian without its default cluster (the keeper runs initdb itself);
# tini as PID 1 reaps the postgres processes the keeper leaves behind when it restarts.
# hadolint ignore=DL3008
RUN mkdir -p /etc/postgresql-common \
 && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf \
 && apt-get update \
 && apt-get install -y --no-install-recommends postgresql-15 ca-certificates tini \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb

RUN groupadd --gid 1000 stolon \
 && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/stolon --shell /bin/sh stolon \
 && mkdir -p /stolon-data \
 && chown stolon:stolon /stolon-data \
 && chmod 0700 /stolon-data

ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8

USER 1000:1000
WORKDIR /home/stolon
VOLUME ["/stolon-data"]
EXPOSE 5432

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["stolonctl", "--help"]

# ---- runtime with binaries compiled beforehand --------------------------------------------
FROM runtime AS prebuilt
COPY bin/stolon-keeper bin/stolon-sentinel bin/stolon-proxy bin/stolonctl /usr/local/bin/

# ---- binaries compiled from source --------------------------------------------------------
FROM ${RUST_IMAGE} AS builder

# protoc: the etcd v3 client's gRPC code is generated at build time.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
RUN cargo build --release --locked \
        --bin stolon-keeper --bin stolon-sentinel --bin stolon-proxy --bin stolonctl

# ---- runtime with binaries compiled from source (the default) -----------------------------
FROM runtime
COPY --from=builder /src/target/release/stolon-keeper /src/target/release/stolon-sentinel \
     /src/target/release/stolon-proxy /src/target/release/stolonctl /usr/local/bin/
