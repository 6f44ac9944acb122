#!/bin/sh
# Fetches Sielum's CRL, checks its signature against the Sielum CA, and installs it as
# PEM for nginx's ssl_crl; reloads nginx only when the CRL changed. Run it every minute.
#
#   refresh-crl.sh [CRL_URL [CA_PEM [CRL_PEM]]]
#
# Defaults: http://127.0.0.1:8446/crl, /etc/nginx/sielum/ca.pem, /etc/nginx/sielum/crl.pem.
# RELOAD, when set, is the command that reloads nginx (default: nginx -s reload).
set -eu
url="${1:-http://127.0.0.1:8446/crl}"
ca="${2:-/etc/nginx/sielum/ca.pem}"
out="${3:-/etc/nginx/sielum/crl.pem}"
reload="${RELOAD:-nginx -s reload}"

tmp="$(mktemp "${out}.XXXXXX")"
trap 'rm -f "$tmp" "$tmp.der"' EXIT
curl --fail --silent --show-error --max-time 20 --output "$tmp.der" "$url"
# A CRL that does not verify against the CA is refused, and the one in place stays
# (openssl crl exits 0 either way: what it prints tells).
case "$(openssl crl -inform DER -in "$tmp.der" -CAfile "$ca" -noout 2>&1)" in
    *"verify OK"*) ;;
    *) echo "refresh-crl: $url is not a CRL signed by $ca" >&2; exit 1 ;;
esac
openssl crl -inform DER -in "$tmp.der" -outform PEM -out "$tmp"
if [ -f "$out" ] && cmp -s "$tmp" "$out"; then
    exit 0
fi
chmod 0644 "$tmp"
mv "$tmp" "$out"
$reload
