#!/usr/bin/env bash
# Build the container images without a registry, by importing root filesystems into Podman:
#   localhost/busybox:latest      busybox-static and a few applets, for fast tests
#   localhost/caesar-apps:latest  Debian bookworm minbase + Debian's python3 scientific stack + caesar_apps,
#                                 with caesar-sfinder, caesar-checksum, caesar-sleeper in /usr/local/bin
# The apps image carries the label caesar.apps.hash (caesar_apps sources + this recipe) and is rebuilt only
# when that hash changes. The debootstrapped base is cached as a tarball, keyed by its package list.
# Run as root (debootstrap, chroot). CONTAINERS_CONF should be set as scripts/podman.sh does.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
cache=${CAESAR_IMAGE_CACHE:-/var/cache/caesar-rest/images}
mirror=${CAESAR_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
packages=python3,python3-numpy,python3-scipy,python3-astropy,python3-photutils,python3-skimage,python3-matplotlib
apps_image=localhost/caesar-apps:latest
busybox_image=localhost/busybox:latest
app_uid=1000

log() { echo "build-images: $*" >&2; }
mkdir -p "$cache"
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# ---- busybox ----------------------------------------------------------------------------------------------
if ! podman image exists "$busybox_image"; then
  log "building $busybox_image"
  bb=$work/busybox
  mkdir -p "$bb/bin" "$bb/etc" "$bb/tmp" "$bb/job"
  chmod 1777 "$bb/tmp"
  cp /bin/busybox "$bb/bin/busybox"
  for applet in sh echo cat sleep md5sum sha256sum ls head tail true false env id touch mkdir rm wc dd yes; do
    ln -s busybox "$bb/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\ncaesar:x:%s:%s:caesar:/job:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' \
    "$app_uid" "$app_uid" >"$bb/etc/passwd"
  printf 'root:x:0:\ncaesar:x:%s:\nnogroup:x:65534:\n' "$app_uid" >"$bb/etc/group"
  tar --numeric-owner -C "$bb" -c . | podman import --quiet \
    --change "ENV=PATH=/bin" --change "WORKDIR=/job" --change 'CMD=["/bin/sh"]' - "$busybox_image" >/dev/null
fi

# ---- caesar-apps -------------------------------------------------------------------------------------------
apps_hash=$( (cd "$repo" && find caesar_apps -name '*.py' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum;
              sha256sum <"$0"; echo "$packages $suite $app_uid") | sha256sum | cut -c1-16)
current=$(podman image inspect --format '{{ index .Labels "caesar.apps.hash" }}' "$apps_image" 2>/dev/null || true)
old_id=$(podman image inspect --format '{{ .Id }}' "$apps_image" 2>/dev/null || true)
if [ "$current" = "$apps_hash" ]; then
  log "$apps_image is up to date (caesar.apps.hash $apps_hash)"
  exit 0
fi

base_key=$(echo "$suite minbase $packages" | sha256sum | cut -c1-12)
base_tar=$cache/$suite-minbase-$base_key.tar
if [ ! -s "$base_tar" ]; then
  log "debootstrap $suite minbase with $packages (cached as $base_tar)"
  start=$SECONDS
  debootstrap --variant=minbase --include="$packages" "$suite" "$work/base" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -30 "$work/debootstrap.log" >&2; log "debootstrap failed"; exit 1; }
  rm -rf "$work/base"/var/cache/apt/archives/*.deb "$work/base"/var/lib/apt/lists/* "$work/base"/var/log/*.log
  tar --numeric-owner -C "$work/base" -cf "$base_tar.part" .
  mv -f "$base_tar.part" "$base_tar"
  rm -rf "$work/base"
  log "base root filesystem ready in $((SECONDS - start)) s"
fi

log "building $apps_image (caesar.apps.hash $apps_hash)"
start=$SECONDS
root=$work/rootfs
mkdir -p "$root"
tar --numeric-owner -C "$root" -xf "$base_tar"
pyver=$(basename "$(ls -d "$root"/usr/lib/python3.[0-9]* | sort -V | tail -1)")
site=$root/usr/local/lib/$pyver/dist-packages
mkdir -p "$site/caesar_apps" "$root/job"
cp "$repo"/caesar_apps/*.py "$site/caesar_apps/"
chroot "$root" "/usr/bin/$pyver" -m compileall -q "/usr/local/lib/$pyver/dist-packages/caesar_apps" >/dev/null
for name in sfinder checksum sleeper; do
  printf '#!/bin/sh\nexec python3 -m caesar_apps.%s "$@"\n' "$name" >"$root/usr/local/bin/caesar-$name"
  chmod 755 "$root/usr/local/bin/caesar-$name"
done
grep -q '^caesar:' "$root/etc/group" || echo "caesar:x:$app_uid:" >>"$root/etc/group"
grep -q '^caesar:' "$root/etc/passwd" || echo "caesar:x:$app_uid:$app_uid:caesar-rest jobs:/job:/usr/sbin/nologin" >>"$root/etc/passwd"
tar --numeric-owner -C "$root" -c . | podman import --quiet \
  --change "LABEL=caesar.apps.hash=$apps_hash" \
  --change "ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
  --change "ENV=LANG=C.UTF-8" --change "ENV=MPLBACKEND=Agg" \
  --change "WORKDIR=/job" --change 'CMD=["/bin/bash"]' - "$apps_image" >/dev/null
# The image this build replaced is left untagged: remove it so rebuilds do not pile up (not if a container uses it).
if [ -n "$old_id" ] && ! podman rmi "$old_id" >/dev/null 2>&1; then
  log "note: the previous image ${old_id:0:12} is still in use; kept"
fi
log "$apps_image built in $((SECONDS - start)) s"
