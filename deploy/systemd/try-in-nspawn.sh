#!/usr/bin/env bash
# Run the units under a real systemd, sandbox and all, where the machine has none as PID 1 (a CI
# container, a VM like the test machines): systemd-nspawn boots this host's own /usr, volatile
# (a fresh /etc and /var in memory), with only a loopback network, the units in
# /etc/systemd/system, the bundled policy in /etc/regionguard, and regionguard from
# /opt/regionguard (install it there first as the README says, with a Python outside /root and
# /home: ProtectHome=yes hides those from the services). A probe unit inside then checks that
# both services run as the dynamic user with the capabilities and filters the units give, that the
# proxy serves its PAC file and blocks a disallowed Zoom address, that the DNS filter answers on
# port 53, and that the timer is scheduled; then the container powers off.
# As root, from the repository root:  deploy/systemd/try-in-nspawn.sh   (Debian: systemd-container)
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -x /opt/regionguard/bin/regionguard ] || { echo "install regionguard into /opt/regionguard first" >&2; exit 2; }
# The venv's Python, when it is not the system's (/usr), is bound into the container too.
python_prefix=$(dirname "$(sed -n 's/^home = //p' /opt/regionguard/pyvenv.cfg)")
case "$python_prefix" in
    /usr|/usr/*) extra=() ;;
    /root/*|/home/*) echo "/opt/regionguard's Python is under $python_prefix, which ProtectHome=yes hides from the services" >&2; exit 2 ;;
    *) extra=("--bind-ro=$python_prefix") ;;
esac
command -v systemd-nspawn >/dev/null ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd-container
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/system/multi-user.target.wants" "$work/system/timers.target.wants" \
    "$work/system/regionguard-dns.service.d" "$work/policy" "$work/probe/out"
cp deploy/systemd/regionguard-* "$work/system/"
cp config/policy.yaml "$work/policy/"
# No upstream resolver in the container: queries get SERVFAIL, which shows the filter answering.
printf '[Service]\nEnvironment="REGIONGUARD_DNS_ARGS=--upstream 127.0.0.1:9 --timeout 1"\n' \
    > "$work/system/regionguard-dns.service.d/no-upstream.conf"
cat > "$work/system/probe.service" <<'EOF'
[Unit]
After=regionguard-proxy.service regionguard-dns.service
SuccessAction=poweroff-force
FailureAction=poweroff-force
[Service]
Type=oneshot
ExecStart=/bin/bash /probe/probe.sh
StandardOutput=file:/probe/out/probe.log
StandardError=inherit
TimeoutStartSec=180
EOF
cat > "$work/probe/probe.sh" <<'EOF'
fail() { echo "PROBE FAIL: $*"; journalctl -b --no-pager -u 'regionguard-*' | tail -40; exit 1; }
for _ in $(seq 60); do curl -sf -m 3 -o /dev/null http://127.0.0.1:8080/proxy.pac && break; sleep 1; done
curl -sf -m 10 http://127.0.0.1:8080/proxy.pac | grep -q FindProxyForURL || fail "no PAC file"
code=$(curl -s -m 10 -o /dev/null -w '%{http_code}' -x http://127.0.0.1:8080 http://221.122.88.195/)
[ "$code" = 403 ] || fail "a disallowed Zoom address got $code"
dig +tries=3 +time=3 -p 53 @127.0.0.1 example.org | grep -q "status: SERVFAIL" || fail "no DNS answer on 127.0.0.1:53"
for unit in regionguard-proxy regionguard-dns; do
    [ "$(systemctl show -p ActiveState --value $unit)" = active ] || fail "$unit not active"
    [ "$(systemctl show -p NRestarts --value $unit)" = 0 ] || fail "$unit restarted"
    pid=$(systemctl show -p MainPID --value $unit)
    status=$(cat /proc/$pid/status)
    echo "$unit: $(grep -E '^(Uid|CapEff|NoNewPrivs|Seccomp):' <<<"$status" | tr '\t\n' '  ')"
    grep -qE '^Uid:\s+0\s' <<<"$status" && fail "$unit runs as root"
    grep -q '^NoNewPrivs:\s*1' <<<"$status" || fail "$unit: no NoNewPrivs"
    grep -q '^Seccomp:\s*2' <<<"$status" || fail "$unit: no system call filter"
    want=0000000000000000; [ $unit = regionguard-dns ] && want=0000000000000400   # CAP_NET_BIND_SERVICE
    grep -q "^CapEff:\s*$want" <<<"$status" || fail "$unit: capabilities are not $want"
    systemd-analyze security --no-pager $unit | tail -1
done
ls /var/lib/regionguard/mitmproxy/mitmproxy-ca.pem /var/lib/regionguard/learned.sqlite3 >/dev/null ||
    fail "state directory not written"
systemctl list-timers --all --no-pager | grep -q regionguard-data-update.timer || fail "timer not scheduled"
echo "PROBE OK"
EOF
for unit in regionguard-proxy.service regionguard-dns.service probe.service; do
    ln -s "../$unit" "$work/system/multi-user.target.wants/$unit"
done
ln -s ../regionguard-data-update.timer "$work/system/timers.target.wants/"
timeout 300 systemd-nspawn --quiet --register=no --keep-unit --volatile=yes -D / --private-network \
    --bind-ro=/opt/regionguard "${extra[@]}" --bind-ro="$work/system:/etc/systemd/system" \
    --bind-ro="$work/policy:/etc/regionguard" --bind="$work/probe:/probe" \
    -b systemd.firstboot=off >"$work/console.log" 2>&1 </dev/null || true
cat "$work/probe/out/probe.log" 2>/dev/null || { echo "the probe did not run:" >&2; tail -30 "$work/console.log" >&2; }
grep -q "^PROBE OK" "$work/probe/out/probe.log" 2>/dev/null
