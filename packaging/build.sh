#!/usr/bin/env bash
# Builds the release artifacts into dist/:
#   ballast_VERSION_ARCH.deb        controller and CLI (serves the agent to new nodes)
#   ballast-agent_VERSION_ARCH.deb  the node agent
#   ballast-VERSION-ARCH-linux.tar.gz, ballast-agent-VERSION-ARCH-linux.tar.gz (+ .sha256)
# Packages are assembled with dpkg-deb (part of dpkg, present on every Debian
# system) rather than cargo-deb, so building them needs no extra tool install.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
dist="${BALLAST_DIST_DIR:-$top/dist}"
bin="${BALLAST_BIN_DIR:-$top/target/release}"

if [ -z "${BALLAST_BIN_DIR:-}" ]; then
    cargo build --release --locked -p ballast-controller -p ballast-agent
fi
rm -rf "$dist" && mkdir -p "$dist"

# Maintainer scripts are generated here so the packages stay self-contained.
package() { # name, tree builder function, depends
    local name=$1 build=$2 tree
    tree=$(mktemp -d)
    mkdir -p "$tree/DEBIAN"
    "$build" "$tree"
    cat >"$tree/DEBIAN/control" <<CTRL
Package: $name
Version: $version
Architecture: $arch
Maintainer: Ballast developers <ballast@example.invalid>
Section: admin
Priority: optional
Depends: ${3:-libc6}
Description: $4
CTRL
    (cd "$tree" && find . -type f ! -path './DEBIAN/*' -printf '%P\n' | sort | xargs md5sum >DEBIAN/md5sums)
    chmod 0755 "$tree/DEBIAN"/post* "$tree/DEBIAN"/pre* 2>/dev/null || true
    dpkg-deb --root-owner-group -Z"${BALLAST_DEB_COMPRESS:-xz}" --build "$tree" "$dist/${name}_${version}_${arch}.deb" >/dev/null
    rm -rf "$tree"
    echo "built $dist/${name}_${version}_${arch}.deb"
}

controller_tree() {
    local t=$1
    install -D -m 0755 "$bin/ballast" "$t/usr/bin/ballast"
    install -D -m 0755 "$bin/ballast-agent" "$t/usr/lib/ballast/ballast-agent"
    install -D -m 0644 packaging/ballast.service "$t/lib/systemd/system/ballast.service"
    install -D -m 0644 packaging/controller.yaml "$t/etc/ballast/controller.yaml"
    echo /etc/ballast/controller.yaml >"$t/DEBIAN/conffiles"
    cat >"$t/DEBIAN/postinst" <<'SH'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    if ! getent passwd ballast >/dev/null; then
        adduser --system --group --home /var/lib/ballast --no-create-home --quiet ballast
    fi
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        systemctl enable ballast.service >/dev/null
        # Upgrades restart a running controller; fresh installs start it by hand.
        if systemctl is-active --quiet ballast.service; then systemctl restart ballast.service; fi
    fi
fi
SH
    cat >"$t/DEBIAN/prerm" <<'SH'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
    systemctl stop ballast.service || true
    systemctl disable ballast.service >/dev/null || true
fi
SH
    cat >"$t/DEBIAN/postrm" <<'SH'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
# The data dir (store, CA) is kept on remove and only deleted on purge.
if [ "$1" = purge ]; then rm -rf /var/lib/ballast; fi
SH
}

agent_tree() {
    local t=$1
    install -D -m 0755 "$bin/ballast-agent" "$t/usr/bin/ballast-agent"
    install -D -m 0644 packaging/ballast-agent.service "$t/lib/systemd/system/ballast-agent.service"
    install -d -m 0755 "$t/etc/ballast/facts.d"
    cat >"$t/DEBIAN/postinst" <<'SH'
#!/bin/sh
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable ballast-agent.service >/dev/null
    # Start only once enrolled (the unit refuses to start before that).
    if [ -s /var/lib/ballast-agent/agent.json ]; then systemctl restart ballast-agent.service; fi
fi
SH
    cat >"$t/DEBIAN/prerm" <<'SH'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
    systemctl stop ballast-agent.service || true
    systemctl disable ballast-agent.service >/dev/null || true
fi
SH
    cat >"$t/DEBIAN/postrm" <<'SH'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
# Enrollment (key, certificate) is kept on remove and only deleted on purge.
if [ "$1" = purge ]; then rm -rf /var/lib/ballast-agent; fi
SH
}

package ballast controller_tree "libc6, adduser" "Ballast controller and operator CLI"
package ballast-agent agent_tree "libc6" "Ballast node agent"

for b in ballast ballast-agent; do
    stage=$(mktemp -d)
    mkdir -p "$stage/$b-$version"
    install -m 0755 "$bin/$b" "$stage/$b-$version/$b"
    cp README.md "$stage/$b-$version/"
    [ "$b" = ballast ] && cp packaging/ballast.service packaging/controller.yaml "$stage/$b-$version/"
    [ "$b" = ballast-agent ] && cp packaging/ballast-agent.service "$stage/$b-$version/"
    tar -C "$stage" --owner=0 --group=0 -czf "$dist/$b-$version-$arch-linux.tar.gz" "$b-$version"
    (cd "$dist" && sha256sum "$b-$version-$arch-linux.tar.gz" >"$b-$version-$arch-linux.tar.gz.sha256")
    rm -rf "$stage"
    echo "built $dist/$b-$version-$arch-linux.tar.gz (+ .sha256)"
done
