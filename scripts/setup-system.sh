#!/usr/bin/env bash
# Installs the system packages the CTI server, its lab PBX and its test bed need
# on Debian 12. Idempotent: a second run installs nothing and returns quickly.
#
# Asterisk is not in Debian 12. We add Debian 11's bullseye and bullseye-security
# suites using the archive URIs this machine already uses for Debian (read from
# its apt sources, never written here), pinned low so that only what Debian 12
# lacks (asterisk*, libssl1.1, ...) comes from them.
set -euo pipefail

need_pkgs=(asterisk asterisk-core-sounds-en-gsm asterisk-core-sounds-ru-gsm
           sip-tester redis-server postgresql chromium)

missing=()
for p in "${need_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# An Asterisk 16+ installed by other means is used as is.
if command -v asterisk >/dev/null 2>&1; then
  ver=$(asterisk -V 2>/dev/null | sed -n 's/^Asterisk \([0-9]*\).*/\1/p')
  if [ -n "$ver" ] && [ "$ver" -ge 16 ]; then
    missing=("${missing[@]/asterisk}")
  fi
fi
clean=()
for p in "${missing[@]}"; do [ -n "$p" ] && clean+=("$p"); done
if [ ${#clean[@]} -eq 0 ]; then
  echo "setup-system: all system packages present"
  exit 0
fi

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

# Archive URIs of this machine's Debian suites (main archive and security).
debian_uri=""
security_uri=""
read_uris() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk 'BEGIN{RS=""} {uris=""; suites="";
         n=split($0, L, "\n");
         for(i=1;i<=n;i++){ if (L[i] ~ /^URIs:/) {sub(/^URIs:[ \t]*/, "", L[i]); uris=L[i]}
                             if (L[i] ~ /^Suites:/) {sub(/^Suites:[ \t]*/, "", L[i]); suites=L[i]} }
         split(uris, U, " "); print suites "\t" U[1] }' "$f"
  done
  if [ -f /etc/apt/sources.list ]; then
    awk '$1=="deb" {u=$2; if (u ~ /^\[/) u=$3; s=(u==$2)?$3:$4; print s "\t" u}' /etc/apt/sources.list
  fi
}
while IFS=$'\t' read -r suites uri; do
  case " $suites " in
    *" bookworm-security "*|*" bookworm/updates "*) [ -z "$security_uri" ] && security_uri="$uri" ;;
    *" bookworm "*) [ -z "$debian_uri" ] && debian_uri="$uri" ;;
  esac
done < <(read_uris)
if [ -z "$debian_uri" ]; then
  echo "setup-system: cannot find this machine's Debian bookworm archive URI in its apt sources" >&2
  exit 1
fi
[ -z "$security_uri" ] && security_uri="${debian_uri%/debian}/debian-security"

list=/etc/apt/sources.list.d/cti-bullseye.sources
want=$(cat <<SRC
Types: deb
URIs: $debian_uri
Suites: bullseye
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security_uri
Suites: bullseye-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
)
if [ ! -f "$list" ] || [ "$(cat "$list")" != "$want" ]; then
  printf '%s\n' "$want" | $SUDO tee "$list" >/dev/null
fi
pin=/etc/apt/preferences.d/cti-bullseye
pin_want=$(cat <<'PIN'
Package: *
Pin: release n=bullseye
Pin-Priority: 100

Package: *
Pin: release n=bullseye-security
Pin-Priority: 100
PIN
)
if [ ! -f "$pin" ] || [ "$(cat "$pin")" != "$pin_want" ]; then
  printf '%s\n' "$pin_want" | $SUDO tee "$pin" >/dev/null
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -o Acquire::Retries=3 -q
$SUDO apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confold "${clean[@]}" \
  ca-certificates
# Debian starts the packaged daemons; the product runs private instances instead.
for svc in asterisk redis-server postgresql; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
    $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true
  fi
done
echo "setup-system: installed ${clean[*]}"
