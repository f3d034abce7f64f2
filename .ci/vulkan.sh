#!/usr/bin/env bash
# A software Vulkan driver for the WebGPU backend on machines without a GPU (CI).
#
# The webgpu package runs Dawn, which needs a Vulkan driver. Without a GPU that is Mesa's
# lavapipe (llvmpipe behind Vulkan), but the one in Debian 12 (Mesa 22.3) lacks features
# Dawn requires and is refused. The Mesa 25 lavapipe of bookworm-backports is accepted, so
# this script fetches it with the libraries it needs that this system lacks (or has at too
# old a version), unpacks them into .vulkan/ at the repository root without installing
# anything from backports, and writes:
#   .vulkan/icd.json  the driver manifest, pointing at the unpacked library;
#   .vulkan/env       VK_ICD_FILENAMES=..., LD_LIBRARY_PATH=... (absolute paths) and
#                     VK_LOADER_LAYERS_DISABLE=... lines, which vitest.config.ts puts into the
#                     environment of the test processes (`set -a; . .vulkan/env` in a shell).
# Running it again does nothing once the driver is in place. Debian 12 (bookworm) only.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/.vulkan"

say() { printf 'vulkan.sh: %s\n' "$*" >&2; }

# Installing from Debian main needs root; use sudo when not root.
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else say "needs root (or sudo) to install libvulkan1"; exit 1; fi
fi

# The packages below are built for Debian 12; anything else would need other versions.
. /etc/os-release
if [ "${ID:-}" != "debian" ] || [ "${VERSION_CODENAME:-}" != "bookworm" ]; then
  say "made for Debian 12 (bookworm), this is ${PRETTY_NAME:-an unknown system}: no driver fetched"
  exit 1
fi

# The Vulkan loader (libvulkan.so.1) is what Dawn opens; it reads VK_ICD_FILENAMES to find
# the driver. It comes from Debian main and is installed system-wide.
if ! dpkg-query -W -f='${Status}' libvulkan1 2>/dev/null | grep -q "install ok installed"; then
  say "installing libvulkan1 from Debian main"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends libvulkan1 >/dev/null
fi

# Done already: the driver, its manifest and the environment file are there, and the
# repository has not moved (the paths are absolute). Delete .vulkan/ to fetch anew.
if [ -f "$out/env" ] && [ -f "$out/icd.json" ] && grep -qxF "VK_ICD_FILENAMES='$out/icd.json'" "$out/env"; then
  lib="$(sed -n 's/.*"library_path": *"\([^"]*\)".*/\1/p' "$out/icd.json")"
  if [ -f "$lib" ]; then
    say "lavapipe $(cat "$out/version" 2>/dev/null) already in .vulkan/"
    exit 0
  fi
fi

rm -rf "$out"
mkdir -p "$out"
# Keeps everything here out of git without touching the repository's own .gitignore.
printf '*\n' > "$out/.gitignore"

# A private apt configuration (sources, package lists, download cache) inside .vulkan/, so
# that backports is never added to the system's sources and nothing is installed: apt only
# resolves against the installed packages and downloads.
apt_dir="$out/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
cat > "$apt_dir/sources.list" <<EOF
deb [signed-by=$keyring] http://deb.debian.org/debian bookworm main
deb [signed-by=$keyring] http://deb.debian.org/debian bookworm-backports main
EOF
apt_opts=(
  -o "Dir::Etc::SourceList=$apt_dir/sources.list"
  -o "Dir::Etc::SourceParts=/dev/null"
  -o "Dir::State::Lists=$apt_dir/lists"
  -o "Dir::Cache=$apt_dir/cache"
  -o "Dir::Cache::archives=$apt_dir/cache/archives"
  -o "APT::Get::List-Cleanup=false"
  # Downloads land in a folder of this repository, which apt's unprivileged _apt user may
  # not be able to write to.
  -o "APT::Sandbox::User=$(id -un)"
)
say "reading the bookworm and bookworm-backports package lists"
apt-get "${apt_opts[@]}" update -qq

# The driver and the newer libdrm it requires, from backports, downloaded whatever is
# installed. Backports keeps only its newest build, so no version is pinned
# (25.0.7-2~bpo12+1 when this was written).
say "downloading mesa-vulkan-drivers from bookworm-backports and what it needs"
archives="$apt_dir/cache/archives"
wanted=(mesa-vulkan-drivers/bookworm-backports libdrm2/bookworm-backports libdrm-amdgpu1/bookworm-backports)
(cd "$archives" && apt-get "${apt_opts[@]}" download -qq "${wanted[@]}")
# Then --download-only against the real dpkg status adds what else this system lacks for
# that build: a library of Debian main that is not installed here (libLLVM-15 on a machine
# that never had Mesa, say) or one that backports must provide newer. Nothing is unpacked
# into the system.
DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y -qq --download-only --no-install-recommends "${wanted[@]}" >/dev/null
version="$(basename "$archives"/mesa-vulkan-drivers_*.deb | cut -d_ -f2 | sed 's/%3a/:/')"

# Unpacked as plain files under .vulkan/root (usr/lib/<triplet>/...); the dynamic linker
# finds them through LD_LIBRARY_PATH, ahead of the system's older copies.
shopt -s nullglob
debs=("$archives"/*.deb)
if [ "${#debs[@]}" -eq 0 ]; then say "apt downloaded nothing"; exit 1; fi
for deb in "${debs[@]}"; do dpkg -x "$deb" "$out/root"; done
rm -rf "$apt_dir"

lib="$(find "$out/root" -name libvulkan_lvp.so -print -quit)"
manifest="$(find "$out/root" -path '*/vulkan/icd.d/lvp_icd*.json' -print -quit)"
if [ -z "$lib" ] || [ -z "$manifest" ]; then say "the package holds no lavapipe driver"; exit 1; fi
libdir="$(dirname "$lib")"
# The package also holds hardware drivers and layers (about 50 MB) that are never loaded here.
find "$libdir" \( -name 'libvulkan_*.so' ! -name libvulkan_lvp.so -o -name 'libVkLayer_*.so' \) -delete

# The packaged manifest names the library relative to the system's library folders; the
# loader must load the unpacked one, so it gets the absolute path.
sed "s#\"library_path\": *\"[^\"]*\"#\"library_path\": \"$lib\"#" "$manifest" > "$out/icd.json"

# Every unpacked library folder (a package of Debian main may still use /lib/<triplet>),
# the driver's first.
libpath="$libdir"
while IFS= read -r dir; do
  [ "$dir" = "$libdir" ] || libpath="$libpath:$dir"
done < <(find "$out/root" -name '*.so*' -printf '%h\n' | sort -u)

# A library the driver needs and the system does not have is a broken setup: say which.
missing="$(LD_LIBRARY_PATH="$libpath" ldd "$lib" | grep 'not found' || true)"
if [ -n "$missing" ]; then say "lavapipe cannot load, missing libraries:"; printf '%s\n' "$missing" >&2; exit 1; fi

# Read by vitest.config.ts: LD_LIBRARY_PATH only works when set before a process starts.
# VK_LOADER_LAYERS_DISABLE keeps out the implicit layers of the system's own Mesa, if it has
# one (its device-selection layer, built for the older libdrm, tries to reach a display and
# prints errors about XDG_RUNTIME_DIR); lavapipe needs no layer.
# Values are single-quoted so that the file can also be sourced by a shell.
# Written last: its presence means the rest is complete.
printf '%s\n' "$version" > "$out/version"
printf "VK_ICD_FILENAMES='%s'\nLD_LIBRARY_PATH='%s'\nVK_LOADER_LAYERS_DISABLE='~implicit~'\n" "$out/icd.json" "$libpath" > "$out/env"
say "lavapipe $version ready: .vulkan/env"
