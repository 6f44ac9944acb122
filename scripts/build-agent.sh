#!/usr/bin/env bash
# Builds the endpoint agent for machines without Python, into dist/:
#   dist/sielum-agent                         one executable (PyInstaller --onefile)
#   dist/sielum-agent_<version>_amd64.deb     it, the systemd unit, /etc/sielum by postinst
#   dist/SHA256SUMS                           both, in `sha256sum -c` format
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  cat <<'EOF'
Usage: bash scripts/build-agent.sh [--help]

Builds, into dist/ (gitignored):
  sielum-agent                      one executable file that carries its own Python and
                                    only the agent (no server module or dependency)
  sielum-agent_<version>_amd64.deb  /usr/bin/sielum-agent, the systemd unit (not enabled), a man page,
                                    /etc/sielum made 0700 by postinst
  SHA256SUMS                        sha256sum of both; check with `sha256sum -c SHA256SUMS`

Steps: a build venv .venv-build/ from scripts/agent-build-requirements.txt (PyInstaller
and the agent's dependencies, pinned; the project's .venv is not touched), PyInstaller
with packaging/sielum-agent.spec (its work dir is kept in build/agent/ to make the next
build faster), the oldest glibc the executable needs (objdump -T over it and the
libraries it bundles: the .deb's libc6 dependency), the .deb with
`dpkg-deb --root-owner-group --build`, the checksums.

Needs: python3 (3.11 or later, with its shared libpython, as Debian's and pyenv's are),
binutils (objdump, strip) and dpkg-deb. Environment:
  PYTHON           the interpreter for .venv-build (default python3)
  DEB_MAINTAINER   the .deb's Maintainer field, "Name <email>" (default: the git identity
                   of whoever builds, `git config user.name` and `user.email`)
Check the .deb with `lintian dist/sielum-agent_*_amd64.deb`; tests/package/ runs all of it.
EOF
}
case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  "") ;;
  *) echo "build-agent.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
esac

# The .deb's directories must be 0755 and its files 0644/0755 whatever the caller's umask.
umask 022
PYTHON="${PYTHON:-python3}"
# Whoever builds the package maintains it, unless told otherwise.
MAINTAINER="${DEB_MAINTAINER:-}"
if [ -z "$MAINTAINER" ]; then
  name=$(git config user.name || true)
  email=$(git config user.email || true)
  if [ -z "$name" ] || [ -z "$email" ]; then
    echo "build-agent.sh: set DEB_MAINTAINER=\"Name <email>\" (or git's user.name and user.email)" >&2
    exit 2
  fi
  MAINTAINER="$name <$email>"
fi
BUILD=build/agent
DIST=dist
START=$SECONDS
step() { printf '==> [%3ds] %s\n' "$((SECONDS - START))" "$*"; }

for tool in objdump strip dpkg-deb gzip sha256sum; do
  command -v "$tool" >/dev/null || { echo "build-agent.sh: $tool is missing (binutils, dpkg)" >&2; exit 1; }
done

step "build venv .venv-build (scripts/agent-build-requirements.txt)"
if [ ! -x .venv-build/bin/python ]; then
  "$PYTHON" -m venv .venv-build
fi
pip=(.venv-build/bin/python -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" -r scripts/agent-build-requirements.txt 2>&1 | grep -v "^WARNING: Location" || true
VERSION=$(.venv-build/bin/python -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
# Sielum itself without its dependencies (the server's are never installed here), for
# its metadata (the version): editable, so the spec reads the sources in src/.
installed=$(.venv-build/bin/python -c 'import importlib.metadata as m; print(m.version("sielum"))' 2>/dev/null || true)
if [ "$installed" != "$VERSION" ]; then
  "${pip[@]}" --no-deps -e . 2>&1 | grep -v "^WARNING: Location" || true
fi
# pip's own failure is filtered above with its warnings: check what it should have done.
.venv-build/bin/python -c "
import importlib.metadata as m, sys
import PyInstaller, grpc, google.protobuf, cryptography
sys.exit(m.version('sielum') != '$VERSION')
" || { echo "build-agent.sh: installing into .venv-build failed" >&2; exit 1; }

step "PyInstaller: $DIST/sielum-agent (packaging/sielum-agent.spec)"
mkdir -p "$BUILD" "$DIST"
# No __pycache__ in src/ from the analysis (tests/test_generated.py compares src/ with
# what the generator writes, and the sources are not this build's to change).
PYTHONDONTWRITEBYTECODE=1 .venv-build/bin/pyinstaller --noconfirm --log-level WARN \
  --distpath "$BUILD/pyinstaller-dist" --workpath "$BUILD/pyinstaller-work" \
  packaging/sielum-agent.spec
install -m 0755 "$BUILD/pyinstaller-dist/sielum-agent" "$DIST/sielum-agent"

step "oldest glibc: objdump -T over the executable and the libraries it bundles"
libs="$BUILD/bundled-libs"
rm -rf "$libs" && mkdir -p "$libs"
.venv-build/bin/python - "$DIST/sielum-agent" "$libs" <<'EOF'
import sys
from pathlib import Path

from PyInstaller.archive.readers import CArchiveReader

archive, out = CArchiveReader(sys.argv[1]), Path(sys.argv[2])
for name, entry in archive.toc.items():
    if entry[-1] == "b":  # a binary: a shared library or an extension module
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(archive.extract(name))
EOF
# Only what a file needs from the system (*UND*, undefined) counts, not what it defines.
glibc_needs() { objdump -T "$1" | awk '/\*UND\*/' | { grep -o 'GLIBC_[0-9][0-9.]*' || true; } | sort -u -V; }
GLIBC=0
GLIBC_FILE=""
while IFS= read -r -d '' file; do
  newest=$(glibc_needs "$file" | tail -1 | sed 's/GLIBC_//')
  if [ -n "$newest" ] && [ "$(printf '%s\n%s\n' "$GLIBC" "$newest" | sort -V | tail -1)" != "$GLIBC" ]; then
    GLIBC=$newest
    GLIBC_FILE=${file#"$libs"/}
  fi
done < <(find "$DIST/sielum-agent" "$libs" -type f -print0)
echo "    glibc >= $GLIBC (the newest symbol version needed, by $GLIBC_FILE)"
echo "$GLIBC" >"$BUILD/glibc-version"
# The bootloader runs before anything is unpacked, so what it links against must come
# from the system: glibc's libraries, and zlib. Each one not of glibc gets the
# dependency its Debian package declares in its shlibs file (as dpkg-shlibdeps would).
GLIBC_LIBS=" libc.so.6 libdl.so.2 libpthread.so.0 libm.so.6 librt.so.1 libutil.so.1 ld-linux-x86-64.so.2 "
DEPENDS="libc6 (>= $GLIBC)"
for lib in $(objdump -p "$DIST/sielum-agent" | awk '$1 == "NEEDED" { print $2 }'); do
  case "$GLIBC_LIBS" in *" $lib "*) continue ;; esac
  owner=$(dpkg -S "*/$lib" 2>/dev/null | head -1 | cut -d' ' -f1 | sed 's/:$//')
  shlibs="/var/lib/dpkg/info/$owner.shlibs"
  name=${lib%%.so.*}
  depend=$(awk -v n="$name" -v v="${lib#*.so.}" \
    '$1 == n && $2 == v { $1 = ""; $2 = ""; sub(/^ +/, ""); print; exit }' "$shlibs" 2>/dev/null || true)
  if [ -z "$depend" ]; then
    echo "build-agent.sh: the executable needs $lib from the system, and no Debian package's shlibs says which" >&2
    exit 1
  fi
  echo "    the bootloader needs $lib: $depend"
  DEPENDS="$DEPENDS, $depend"
done

step "staging the .deb tree in $BUILD/deb"
root="$BUILD/deb"
rm -rf "$root"
install -D -m 0755 "$DIST/sielum-agent" "$root/usr/bin/sielum-agent"
# The example unit, run from /usr/bin, with a header for the package instead of the
# example's install steps (everything up to the first blank line).
unit="$root/lib/systemd/system/sielum-agent.service"
mkdir -p "$(dirname "$unit")"
{
  cat <<'EOF'
# /lib/systemd/system/sielum-agent.service, from the sielum-agent package.
#
# Keeps this endpoint's device certificate fresh: a heartbeat as often as the server
# advises (5 minutes unless changed there; --interval pins it here instead),
# a renewal soon after the server's renew_after, backoff while the server is away.
# The package enables nothing: enroll first (as root, once), then enable:
#
#   sielum-agent enroll --server https://enroll.example.com:8443 \
#       --ca-fingerprint sha256:... --cert-dir /etc/sielum --token-file -
#   sudo systemctl enable --now sielum-agent
#   journalctl -u sielum-agent     # one line per renewal and per change of state
#
# Change it with `systemctl edit sielum-agent` (a drop-in), not here. Exit 9 means the
# server refused this device (revoked, unknown, superseded): restarting would not
# help, so systemd leaves it stopped. Re-enroll with a new token and --force, then
# `systemctl restart sielum-agent`. Any other failure (a cert dir not enrolled yet,
# unreadable) is retried every RestartSec.
EOF
  echo
  sed -e '1,/^$/d' -e 's|/opt/sielum/venv/bin/sielum-agent|/usr/bin/sielum-agent|' \
    examples/systemd/sielum-agent.service
} >"$unit"
chmod 0644 "$unit"
grep -q '^ExecStart=/usr/bin/sielum-agent run ' "$unit" \
  || { echo "build-agent.sh: the unit's ExecStart is not /usr/bin/sielum-agent run" >&2; exit 1; }

doc="$root/usr/share/doc/sielum-agent"
install -D -m 0644 packaging/deb/copyright "$doc/copyright"
# The version has no Debian revision (it is Sielum's own): a native package, whose
# changelog Debian policy (12.7) and lintian want as changelog.gz.
# Its date and the files' times are the commit's, so that the same commit
# gives the same .deb (dpkg-deb reads SOURCE_DATE_EPOCH).
SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || date +%s)
export SOURCE_DATE_EPOCH
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
{
  printf 'sielum-agent (%s) unstable; urgency=medium\n\n' "$VERSION"
  printf '  * Sielum %s (commit %s): the endpoint agent as one executable.\n\n' "$VERSION" "$commit"
  printf ' -- %s  %s\n' "$MAINTAINER" "$(date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n >"$doc/changelog.gz"
chmod 0644 "$doc/changelog.gz"

install -d "$root/usr/share/man/man1"
gzip -9n <packaging/deb/sielum-agent.1 >"$root/usr/share/man/man1/sielum-agent.1.gz"
chmod 0644 "$root/usr/share/man/man1/sielum-agent.1.gz"

mkdir -p "$root/DEBIAN"
for script in postinst prerm postrm; do
  install -m 0755 "packaging/deb/$script" "$root/DEBIAN/$script"
done
installed_size=$(du -k -s --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<EOF
Package: sielum-agent
Version: $VERSION
Architecture: amd64
Maintainer: $MAINTAINER
Installed-Size: $installed_size
Depends: $DEPENDS
Section: admin
Priority: optional
Description: Sielum endpoint agent: device certificate enrollment and renewal
 sielum-agent exchanges a one-time enrollment token for a device certificate
 signed by the Sielum CA (enroll), then keeps it fresh over mutual TLS:
 heartbeats and automatic renewal (run, as the systemd unit
 sielum-agent.service), status and renew.
 .
 One executable that carries its own Python interpreter and the libraries
 the agent uses; nothing of the Sielum server.
EOF
chmod 0644 "$root/DEBIAN/control"
find "$root" -type d -exec chmod 0755 {} +

DEB="$DIST/sielum-agent_${VERSION}_amd64.deb"
step "dpkg-deb: $DEB"
rm -f "$DIST"/sielum-agent_*_amd64.deb
# gzip: the executable is compressed already; xz would take 10 s more for 1.5 %.
dpkg-deb --root-owner-group -Zgzip --build "$root" "$DEB" >/dev/null

step "checksums: $DIST/SHA256SUMS"
(cd "$DIST" && sha256sum sielum-agent "$(basename "$DEB")" >SHA256SUMS)

step "done in $((SECONDS - START)) s"
for file in "$DIST/sielum-agent" "$DEB"; do
  stat -c '%s %n' "$file" | awk '{ printf "    %-40s %6.1f MB (%d bytes)\n", $2, $1 / 1e6, $1 }'
done
echo "    needs glibc >= $GLIBC; check with: (cd $DIST && sha256sum -c SHA256SUMS)"
