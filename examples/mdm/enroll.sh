#!/bin/sh
# Enrolls this machine with Sielum, once: a run-once script for MDM tools that run
# shell scripts as root (Jamf Pro policies, Intune shell scripts, Workspace ONE
# scripts) and for cloud-init's first boot (examples/cloud-init/user-data.yaml).
#
# Idempotent: a machine that holds an enrollment (agent.json in the cert dir) is
# left alone and the script exits 0, so "run once" and "run at every check-in"
# policies both work. After a successful enrollment the token file is deleted.
#
# The agent: your MDM's package, or, with SIELUM_PACKAGE_URL and
# SIELUM_PACKAGE_SHA256 set, this script installs it when SIELUM_AGENT is missing:
# the .deb (a URL ending in .deb: dpkg -i) or the single executable (installed at
# SIELUM_AGENT), built by scripts/build-agent.sh, downloaded and checked against
# its SHA-256 (its line in SHA256SUMS) before anything is installed. Never from a
# package index. SIELUM_ROOT installs into another root (an image being built:
# dpkg --root); SIELUM_AGENT and SIELUM_CERT_DIR are then paths under it.
#
# Settings: edit the defaults below, or set them in the environment. Jamf Pro
# passes its script parameters 4 and 5 as the enroll server and the CA
# fingerprint. The token never goes through a parameter (Jamf shows parameters in
# its logs and `ps` shows them to every user): it is read by the agent itself
# from SIELUM_TOKEN_FILE (a file the MDM or the provisioner put there, mode 0600)
# or from SIELUM_ENROLLMENT_TOKEN in the environment.
#
# Exit codes, as the MDM console shows them (0 is success, anything else fails,
# and Intune and Workspace ONE retry a failed script on their own schedule):
#   0   enrolled now, or already enrolled (nothing done)
#   1   the server failed the request or its answer failed the agent's checks: retry
#   2   bad settings: SIELUM_SERVER, SIELUM_CA_FINGERPRINT, or a mistyped token
#   3   CA fingerprint mismatch: not the pinned server (the token was not sent)
#   4   token refused: invalid, expired, exhausted or revoked (a new token is needed)
#   5   server unreachable: retry later
#   6   the cert dir cannot be created or written
#   10  sielum-agent is not installed at SIELUM_AGENT
#   11  no token: neither SIELUM_TOKEN_FILE nor SIELUM_ENROLLMENT_TOKEN
#   12  enrolled, but the agent service could not be enabled
#   13  the agent package could not be downloaded, failed its SHA-256 check, or
#       could not be installed (nothing was installed)
# Codes 1 to 6 are sielum-agent's own; the last line of output says what happened.

set -u

SIELUM_SERVER="${4:-${SIELUM_SERVER:-https://enroll.example.com:8443}}"
SIELUM_CA_FINGERPRINT="${5:-${SIELUM_CA_FINGERPRINT:-sha256:0000000000000000000000000000000000000000000000000000000000000000}}"
SIELUM_AGENT="${SIELUM_AGENT:-/usr/bin/sielum-agent}"
SIELUM_PACKAGE_URL="${SIELUM_PACKAGE_URL:-}"
SIELUM_PACKAGE_SHA256="${SIELUM_PACKAGE_SHA256:-}"
SIELUM_ROOT="${SIELUM_ROOT:-}"
SIELUM_CERT_DIR="${SIELUM_CERT_DIR:-/etc/sielum}"
SIELUM_TOKEN_FILE="${SIELUM_TOKEN_FILE:-/etc/sielum/enroll.token}"
SIELUM_HOSTNAME="${SIELUM_HOSTNAME:-$(hostname)}"
# The systemd unit to enable and start once enrolled; empty: leave services alone
# (macOS, or a package that starts the agent itself).
SIELUM_SERVICE="${SIELUM_SERVICE:-sielum-agent.service}"

say() { echo "sielum-enroll: $*"; }

enable_service() {
    if [ -z "$SIELUM_SERVICE" ]; then
        return 0
    fi
    if [ ! -d /run/systemd/system ]; then
        say "systemd is not running here: $SIELUM_SERVICE not started"
        return 0
    fi
    if ! systemctl enable --now "$SIELUM_SERVICE"; then
        say "FAILED (12): enrolled, but systemctl could not enable $SIELUM_SERVICE"
        exit 12
    fi
    say "service $SIELUM_SERVICE enabled and started"
}

if [ -f "$SIELUM_CERT_DIR/agent.json" ]; then
    rm -f "$SIELUM_TOKEN_FILE"
    enable_service
    say "OK: already enrolled ($SIELUM_CERT_DIR/agent.json), nothing to do"
    exit 0
fi

# Downloads the package, checks its SHA-256, installs it; nothing is installed
# unless the check passed.
install_agent() {
    case $SIELUM_PACKAGE_SHA256 in
        *[!0-9a-f]* | "")
            say "FAILED (2): SIELUM_PACKAGE_SHA256 must be the package's SHA-256, 64 hex digits"
            exit 2
            ;;
    esac
    if [ ${#SIELUM_PACKAGE_SHA256} -ne 64 ]; then
        say "FAILED (2): SIELUM_PACKAGE_SHA256 must be the package's SHA-256, 64 hex digits"
        exit 2
    fi
    work=$(mktemp -d) || { say "FAILED (13): no temporary directory"; exit 13; }
    trap 'rm -rf "$work"' EXIT
    file="$work/package"
    if ! curl -fsS --retry 3 -o "$file" "$SIELUM_PACKAGE_URL"; then
        say "FAILED (13): could not download $SIELUM_PACKAGE_URL; nothing installed"
        exit 13
    fi
    got=$(sha256sum "$file" | cut -d' ' -f1)
    if [ "$got" != "$SIELUM_PACKAGE_SHA256" ]; then
        say "FAILED (13): $SIELUM_PACKAGE_URL has SHA-256 $got, not $SIELUM_PACKAGE_SHA256; nothing installed"
        exit 13
    fi
    case $SIELUM_PACKAGE_URL in
        *.deb)
            # Another root: the package's maintainer scripts honour DPKG_ROOT.
            set -- dpkg
            [ -n "$SIELUM_ROOT" ] && set -- dpkg "--root=$SIELUM_ROOT" --force-script-chrootless
            "$@" --install "$file" >/dev/null || {
                say "FAILED (13): dpkg could not install the package"
                exit 13
            }
            ;;
        *)
            install -D -m 0755 "$file" "$SIELUM_AGENT" || {
                say "FAILED (13): could not install the executable at $SIELUM_AGENT"
                exit 13
            }
            ;;
    esac
    rm -rf "$work"
    trap - EXIT
    say "installed sielum-agent from $SIELUM_PACKAGE_URL (SHA-256 checked)"
}

if [ ! -x "$SIELUM_AGENT" ] && [ -n "$SIELUM_PACKAGE_URL" ]; then
    install_agent
fi

if [ ! -x "$SIELUM_AGENT" ]; then
    say "FAILED (10): sielum-agent is not installed at $SIELUM_AGENT"
    exit 10
fi

if [ -r "$SIELUM_TOKEN_FILE" ]; then
    set -- --token-file "$SIELUM_TOKEN_FILE"
elif [ -n "${SIELUM_ENROLLMENT_TOKEN:-}" ]; then
    set --
else
    say "FAILED (11): no token: $SIELUM_TOKEN_FILE is missing and SIELUM_ENROLLMENT_TOKEN is unset"
    exit 11
fi

# The agent prints one line on stderr when it fails, never the token.
"$SIELUM_AGENT" enroll --server "$SIELUM_SERVER" --ca-fingerprint "$SIELUM_CA_FINGERPRINT" \
    --cert-dir "$SIELUM_CERT_DIR" --hostname "$SIELUM_HOSTNAME" "$@" 2>&1
code=$?

case $code in
    0)
        rm -f "$SIELUM_TOKEN_FILE"
        enable_service
        say "OK: enrolled"
        exit 0
        ;;
    7)
        # Enrolled by another run between our check and the agent's (a race).
        rm -f "$SIELUM_TOKEN_FILE"
        enable_service
        say "OK: already enrolled, nothing to do"
        exit 0
        ;;
    1) reason="the server failed the request; retry later" ;;
    2) reason="bad settings or a mistyped token; fix the script's settings" ;;
    3) reason="CA fingerprint mismatch: not the pinned server; the token was not sent" ;;
    4) reason="token refused (invalid, expired, exhausted or revoked); a new token is needed" ;;
    5) reason="server unreachable; retry later" ;;
    6) reason="the cert dir $SIELUM_CERT_DIR cannot be written" ;;
    *) reason="sielum-agent enroll exited $code" ;;
esac
say "FAILED ($code): $reason"
exit "$code"
