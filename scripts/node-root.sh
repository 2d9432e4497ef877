#!/usr/bin/env bash
# Builds (once) the Debian bookworm root filesystem that real-node tests boot
# with systemd-nspawn. Cached outside the repo; rebuilt only when missing or
# incomplete (it is built beside the target and renamed when complete).
#   BALLAST_NODE_ROOT_CACHE   where the root lives (default /var/cache/ballast-test/bookworm)
set -euo pipefail

cache="${BALLAST_NODE_ROOT_CACHE:-/var/cache/ballast-test/bookworm}"
marker="$cache/.ballast-root-complete"

if [ -f "$marker" ]; then
    echo "node root: $cache (cached)"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "error: building the node root needs root (debootstrap)" >&2
    exit 1
fi

need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v dpkg-scanpackages >/dev/null || need+=(dpkg-dev)
if [ ${#need[@]} -gt 0 ]; then
    echo "node root: installing ${need[*]}"
    apt-get update -q >/dev/null
    apt-get install -y -q "${need[@]}" >/dev/null
fi

# The mirror this machine's own apt uses (no other network is reachable).
mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
mirror=${mirror:-$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null)}
mirror=${mirror:-http://deb.debian.org/debian}

work="$cache.building"
rm -rf "$work"
mkdir -p "$(dirname "$cache")"
echo "node root: debootstrap bookworm from $mirror into $work (a few minutes)"
debootstrap --variant=minbase \
    --include=systemd,systemd-sysv,dbus,cron,ca-certificates,netbase,iproute2,procps,passwd,adduser,curl,openssl,cloud-init,python3-cffi-backend \
    bookworm "$work" "$mirror" >"$work.log" 2>&1 || { echo "error: debootstrap failed; see $work.log" >&2; tail -5 "$work.log" >&2; exit 1; }

# Fast, quiet boots in a container: nothing waits for a network that is
# already there, no timers run apt behind the tests' back.
for unit in systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
    fstrim.timer man-db.timer systemd-timesyncd.service console-getty.service getty@tty1.service; do
    ln -sf /dev/null "$work/etc/systemd/system/$unit"
done
# Tests bring their own local apt repository; the node has no other source.
rm -f "$work/etc/apt/sources.list" "$work/etc/apt/sources.list.d/"*
echo "ballast-node" >"$work/etc/hostname"
rm -rf "$work/var/cache/apt/archives/"*.deb
touch "$work/.ballast-root-complete"
rm -rf "$cache"
mv "$work" "$cache"
echo "node root: ready at $cache"
