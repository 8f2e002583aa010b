#!/usr/bin/env bash
# Builds the stolon-rs container image on a machine with a Docker engine but no image registry.
#
#   1. Base: a minimal Debian 12 (bookworm) root filesystem made with
#      `debootstrap --variant=minbase` from the Debian mirror apt is configured with (read from
#      /etc/apt/sources.list and /etc/apt/sources.list.d/; STOLON_DEBIAN_MIRROR overrides it),
#      without documentation, imported with `docker import` as stolon-rs-base:bookworm-<key>.
#      <key> hashes the recipe below and the mirror: an image with that tag is reused, any other
#      is rebuilt (--rebuild-base forces it). Nothing else is cached.
#   2. The project's Dockerfile on that base (build argument BASE_IMAGE). With --binaries DIR, its
#      target `prebuilt` with the four binaries from DIR (compiled on this Debian 12 host; symbols
#      info is stripped); without, the default target, which compiles them in the public rust
#      image and so needs a registry and BuildKit.
#   3. With --etcd-tag, the Dockerfile's `etcd` target on the same base.
# PostgreSQL, tini and etcd come from the Debian mirror during `docker build`.
#
# Usage: scripts/image.sh [--binaries DIR] [--tag NAME:TAG] [--etcd-tag NAME:TAG] [--rebuild-base]
# Default tag: stolon-rs:<workspace version>. Prints the time of each phase and the image sizes.
# Needs root (debootstrap) and a running Docker engine with BuildKit (Docker 20.10 or later).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
suite=bookworm

die() {
  echo "image.sh: $*" >&2
  exit 1
}

version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/Cargo.toml" | head -n1)"
tag="stolon-rs:${version:-dev}"
etcd_tag=""
binaries=""
rebuild_base=0
while [ $# -gt 0 ]; do
  case "$1" in
    --binaries) [ $# -ge 2 ] || die "--binaries needs a directory"; binaries="$2"; shift 2 ;;
    --tag) [ $# -ge 2 ] || die "--tag needs NAME:TAG"; tag="$2"; shift 2 ;;
    --etcd-tag) [ $# -ge 2 ] || die "--etcd-tag needs NAME:TAG"; etcd_tag="$2"; shift 2 ;;
    --rebuild-base) rebuild_base=1; shift ;;
    -h|--help) sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

command -v docker >/dev/null 2>&1 || die "docker not found: a Docker engine is needed"
docker info >/dev/null 2>&1 || die "the Docker engine does not answer ('docker info' failed)"

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# The first URI of an enabled `deb` source carrying suite $1 with component main, from the
# one-line (.list) and deb822 (.sources) files apt reads.
apt_uri_for_suite() {
  local want="$1" f
  {
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
      [ -f "$f" ] || continue
      awk -v want="$want" '
        $1 == "deb" {
          i = 2
          if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
          uri = $i; s = $(i + 1); main = 0
          for (j = i + 2; j <= NF; j++) if ($j == "main") main = 1
          if (s == want && main) print uri
        }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
      [ -f "$f" ] || continue
      awk -v want="$want" '
        function flush() {
          if (types ~ /(^| )deb( |$)/ && enabled != "no" && (" " suites " ") ~ (" " want " ") \
              && (" " comps " ") ~ / main /) { split(uris, u, " "); print u[1] }
          types = uris = suites = comps = ""; enabled = "yes"
        }
        BEGIN { enabled = "yes" }
        /^[[:space:]]*#/ { next }
        /^[[:space:]]*$/ { flush(); next }
        {
          key = tolower($1); sub(/:$/, "", key); $1 = ""; sub(/^ +/, "")
          if (key == "types") types = $0
          else if (key == "uris") uris = $0
          else if (key == "suites") suites = $0
          else if (key == "components") comps = $0
          else if (key == "enabled") enabled = tolower($0)
        }
        END { flush() }' "$f"
    done
  } | head -n1
}

mirror="${STOLON_DEBIAN_MIRROR:-$(apt_uri_for_suite "$suite")}"
[ -n "$mirror" ] || die "no Debian mirror for '$suite main' in /etc/apt/sources.list or /etc/apt/sources.list.d/ (set STOLON_DEBIAN_MIRROR)"
security="${STOLON_DEBIAN_SECURITY_MIRROR:-$(apt_uri_for_suite "$suite-security")}"

# Makes the base root filesystem in $1 and imports it as $2. Its text is part of the cache key.
make_base() {
  local rootfs="$1" name="$2"
  local t
  t="$(now)"
  debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
    || { tail -n 20 "$rootfs.log" >&2; die "debootstrap $suite from $mirror failed (log above)"; }
  echo "phase debootstrap: $(elapsed "$t") s"
  t="$(now)"
  {
    echo "deb $mirror $suite main"
    echo "deb $mirror $suite-updates main"
    if [ -n "$security" ]; then echo "deb $security $suite-security main"; fi
  } >"$rootfs/etc/apt/sources.list"
  # Packages installed later leave out documentation, manuals and translations.
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/90-stolon-nodoc" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
  # dpkg without an fsync per file: an image build is redone, not recovered, after a crash
  # (and fsync on the engine's fuse-overlayfs is slow).
  echo force-unsafe-io >"$rootfs/etc/dpkg/dpkg.cfg.d/90-stolon-unsafe-io"
  # No recommended packages, and no package caches left in image layers.
  cat >"$rootfs/etc/apt/apt.conf.d/90-stolon-slim" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb || true"; };
EOF
  find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/*.log
  tar --numeric-owner -C "$rootfs" -c . \
    | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' \
        - "$name" >/dev/null
  echo "phase import: $(elapsed "$t") s"
}

key="$( { declare -f make_base; echo "$suite $mirror $security"; } | sha256sum | cut -c1-16)"
base="stolon-rs-base:$suite-$key"

t0="$(now)"
if [ "$rebuild_base" = 0 ] && docker image inspect "$base" >/dev/null 2>&1; then
  echo "== base: reusing $base (same recipe and mirror)"
else
  [ "$(id -u)" = 0 ] || die "making the base image needs root (debootstrap)"
  if ! command -v debootstrap >/dev/null 2>&1; then
    echo "== installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y debootstrap >/dev/null 2>&1 \
      || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y debootstrap >/dev/null; } \
      || die "could not install debootstrap with apt-get"
  fi
  echo "== base: debootstrap --variant=minbase $suite from $mirror"
  work="$(mktemp -d "${TMPDIR:-/var/tmp}/stolon-rootfs.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  make_base "$work/rootfs" "$base"
  rm -rf "$work"
  trap - EXIT
  # Bases of other recipes or mirrors are stale: remove them (a running container keeps its own).
  docker image ls --format '{{.Repository}}:{{.Tag}}' stolon-rs-base | grep -vxF "$base" \
    | xargs -r docker image rm >/dev/null 2>&1 || true
fi
echo "phase base: $(elapsed "$t0") s ($base)"

# The build context: the repository, or a directory holding only bin/ with the given binaries.
build_args=(--build-arg "BASE_IMAGE=$base")
target=()
context="$repo"
if [ -n "$binaries" ]; then
  [ -d "$binaries" ] || die "--binaries $binaries: not a directory"
  context="$(mktemp -d "${TMPDIR:-/var/tmp}/stolon-image-context.XXXXXX")"
  trap 'rm -rf "$context"' EXIT
  mkdir "$context/bin"
  for b in stolon-keeper stolon-sentinel stolon-proxy stolonctl; do
    [ -x "$binaries/$b" ] || die "--binaries $binaries: no executable $b (build it first: cargo build --bins)"
    cp "$binaries/$b" "$context/bin/$b"
    if command -v strip >/dev/null 2>&1; then strip --strip-all "$context/bin/$b"; fi
  done
  target=(--target prebuilt)
fi

# BuildKit when the engine's CLI has it (buildx); else the legacy builder, which builds every
# stage before the target and so only serves the targets `prebuilt` and `etcd`.
if docker buildx version >/dev/null 2>&1; then
  builder=(env DOCKER_BUILDKIT=1 docker build --progress=plain)
else
  [ -n "$binaries" ] || die "building from source needs BuildKit (docker buildx); without it use --binaries DIR"
  builder=(env DOCKER_BUILDKIT=0 docker build --force-rm)
fi

# docker build of tag $1 with extra arguments; its output goes to a log shown on failure.
build() {
  local t="$1" log
  shift
  log="$(mktemp "${TMPDIR:-/var/tmp}/stolon-image-build.XXXXXX")"
  if ! "${builder[@]}" "${build_args[@]}" "$@" \
       -f "$repo/Dockerfile" -t "$t" "$context" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    rm -f "$log"
    die "docker build of $t failed (end of its output above)"
  fi
  rm -f "$log"
}

t0="$(now)"
echo "== docker build $tag (base $base${binaries:+, binaries from $binaries})"
build "$tag" "${target[@]}" --label "org.opencontainers.image.version=$version"
echo "phase build: $(elapsed "$t0") s ($tag, $(docker image inspect -f '{{.Size}}' "$tag" | awk '{ printf "%.0f MB", $1 / 1e6 }'))"

if [ -n "$etcd_tag" ]; then
  t0="$(now)"
  echo "== docker build $etcd_tag (target etcd)"
  build "$etcd_tag" --target etcd
  echo "phase etcd: $(elapsed "$t0") s ($etcd_tag, $(docker image inspect -f '{{.Size}}' "$etcd_tag" | awk '{ printf "%.0f MB", $1 / 1e6 }'))"
fi
