#!/bin/sh
# A TEMPORARY stand-in for `egresswatch-collector ca init|issue`, made with openssl. run.sh deploys
# it in the collector's place only while the built collector has no `ca` command at all (its
# --help names none); once the real command exists the real binary is always used. It follows the
# CLI and file contract of shared/session.md so that the roles are exercised meanwhile.
set -eu
umask 077
usage() { echo "usage: $0 ca init --dir DIR | ca issue --dir DIR AGENT_ID [--out OUTDIR]" >&2; exit 2; }
[ "${1:-}" = ca ] || usage
cmd=${2:-}; shift 2 || usage
dir= out= id=
while [ $# -gt 0 ]; do
    case $1 in
        --dir) dir=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        -*) usage ;;
        *) id=$1; shift ;;
    esac
done
[ -n "$dir" ] || usage
case $cmd in
    init)
        mkdir -p "$dir"
        [ -e "$dir/ca.pem" ] && { echo "$dir/ca.pem exists" >&2; exit 1; }
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
            -subj "/CN=egresswatch fleet CA" -addext basicConstraints=critical,CA:TRUE \
            -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
        chmod 0600 "$dir/ca.key"; chmod 0644 "$dir/ca.pem"
        echo "$dir/ca.pem" ;;
    issue)
        [ -n "$id" ] || usage
        out=${out:-$dir/agents}; mkdir -p "$out"
        ext=$(mktemp)
        printf 'subjectAltName=DNS:%s\nextendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n' "$id" >"$ext"
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$id" \
            -keyout "$out/$id.key" 2>/dev/null |
            openssl x509 -req -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial -days 825 \
                -extfile "$ext" -out "$out/$id.crt" 2>/dev/null
        rm -f "$ext" "$dir/ca.srl"
        chmod 0600 "$out/$id.key"
        echo "$out/$id.crt"; echo "$out/$id.key" ;;
    *) usage ;;
esac
