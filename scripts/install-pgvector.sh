#!/usr/bin/env bash
# Builds pgvector from Debian's source package against the local PostgreSQL server and installs it.
# Needs root (apt-get, make install). Debian bookworm has no pgvector package for PostgreSQL 15,
# so the source comes from trixie's deb-src; only the source is taken, nothing else from trixie.
set -euo pipefail
pg_config=$("$(dirname "$0")/find-pg-bin.sh" pg_config)
major=$("$pg_config" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
echo "==> building pgvector for PostgreSQL $major from Debian's source package" >&2

src_list=/etc/apt/sources.list.d/pgregen-trixie-src.sources
if [ ! -f "$src_list" ]; then
  cat > "$src_list" <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq -o Acquire::Retries=3 >/dev/null
apt-get install -y -qq --no-install-recommends dpkg-dev build-essential "postgresql-server-dev-$major" >/dev/null

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get source -qq --download-only pgvector >/dev/null && dpkg-source -x --skip-patches ./*.dsc src >/dev/null)
make -s -C "$work/src" PG_CONFIG="$pg_config" OPTFLAGS="" >/dev/null
make -s -C "$work/src" PG_CONFIG="$pg_config" install >/dev/null
echo "==> pgvector installed into $("$pg_config" --sharedir)/extension" >&2
