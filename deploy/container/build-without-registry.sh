#!/usr/bin/env bash
# Build the image where no container registry is reachable (only Debian's archive and PyPI), and
# run both front ends in it once. As root, on Debian, from the repository root:
#   deploy/container/build-without-registry.sh
# The base image (PYTHON_IMAGE) is made with debootstrap instead of pulled: Debian 13 has the
# Python >= 3.12 that regionguard needs. Then the unchanged Containerfile is built with buildah,
# and both front ends are started in a private network namespace (their 0.0.0.0 is private
# there) and probed from inside it. Takes a few minutes; leaves the images localhost/regionguard-base:trixie
# and localhost/regionguard:0.1.0 in buildah's storage (remove: buildah rmi -a).
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$(mktemp -d)
ns=rg-image-$$
cleanup() {
    ip netns del "$ns" 2>/dev/null || true
    buildah rm rg-image-base rg-image-run >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

command -v buildah >/dev/null && command -v debootstrap >/dev/null && command -v dig >/dev/null ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah debootstrap dnsutils curl

echo "== base image: Debian 13 (trixie) with Python, by debootstrap" >&2
debootstrap --variant=minbase --include=python3,python3-venv,python3-dev,python-is-python3,ca-certificates \
    trixie "$work/root" http://deb.debian.org/debian >"$work/debootstrap.log"
buildah from --name rg-image-base scratch >/dev/null
cp -a "$work/root/." "$(buildah mount rg-image-base)/"
buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin rg-image-base
buildah commit -q rg-image-base localhost/regionguard-base:trixie >/dev/null

echo "== the Containerfile, unchanged" >&2
# The host's trust store, for pip behind a TLS-inspecting proxy: mounted for the build only.
buildah bud --isolation chroot --network host \
    -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
    --build-arg PYTHON_IMAGE=localhost/regionguard-base:trixie \
    -f deploy/container/Containerfile -t localhost/regionguard:0.1.0 .

echo "== both front ends in the image, each in a private network namespace" >&2
mkdir -p "$work/policy" "$work/state"
cp config/policy.yaml "$work/policy/"
chown 10001:10001 "$work/state"
ip netns add "$ns"
ip -n "$ns" link set lo up
buildah from --name rg-image-run localhost/regionguard:0.1.0 >/dev/null
run_in_image() {   # ENTRYPOINT + arguments, as the image's user, policy and state mounted
    ip netns exec "$ns" buildah run --isolation chroot --network host \
        -v "$work/policy:/etc/regionguard:ro" -v "$work/state:/var/lib/regionguard" rg-image-run -- "$@"
}
user=$(buildah inspect --format '{{.OCIv1.Config.User}}' rg-image-run)
mapfile -t cmd < <(buildah inspect --format '{{range .OCIv1.Config.Cmd}}{{println .}}{{end}}' rg-image-run)
run_in_image regionguard "${cmd[@]}" >"$work/proxy.log" 2>&1 &
proxy=$!
run_in_image regionguard dns --policy /etc/regionguard/policy.yaml --listen 0.0.0.0:5353 \
    --state-dir /var/lib/regionguard --upstream 127.0.0.1:9 --timeout 1 >"$work/dns.log" 2>&1 &
dns=$!
for _ in $(seq 60); do
    grep -q "PAC file" "$work/proxy.log" && grep -q "listening on" "$work/dns.log" && break
    sleep 1
done
status=0
ip netns exec "$ns" curl -sf -m 10 http://127.0.0.1:8080/proxy.pac | grep -q FindProxyForURL || { echo "FAIL: no PAC file" >&2; status=1; }
# 221.122.88.195 is Zoom's, in China: blocked before any connection is made.
code=$(ip netns exec "$ns" curl -s -m 10 -o /dev/null -w '%{http_code}' -x http://127.0.0.1:8080 http://221.122.88.195/)
[ "$code" = 403 ] || { echo "FAIL: a disallowed Zoom address got $code, not 403" >&2; status=1; }
ip netns exec "$ns" dig +tries=1 +time=5 -p 5353 @127.0.0.1 example.org | grep -q "status: SERVFAIL" ||
    { echo "FAIL: the DNS filter did not answer (SERVFAIL expected: no upstream)" >&2; status=1; }
descendants() { local c; for c in $(ps -o pid= --ppid "$1"); do descendants "$c"; echo "$c"; done; }
for pid in $(descendants "$proxy") $(descendants "$dns") "$proxy" "$dns"; do   # ours only, by pid
    kill -TERM "$pid" 2>/dev/null || true
done
wait "$proxy" "$dns" 2>/dev/null || true
echo "image user: $user" >&2
sed 's/^/proxy: /' "$work/proxy.log" >&2
sed 's/^/dns:   /' "$work/dns.log" >&2
[ "$status" = 0 ] && echo "OK: the image builds, runs as $user, and both front ends serve" >&2
exit "$status"
