#!/usr/bin/env bash
# Installs what the test suite talks to, if it is missing: Python 3 (smtplib
# is a reference SMTP client), swaks, Postfix's smtp-source/smtp-sink,
# openssl, systemd-analyze, prlimit. Debian packages only; needs root (CI
# runs as root). Safe to run again. On a host that runs another MTA it
# asks before installing postfix (INSTALL_TEST_DEPS=1: don't ask; CI=true
# proceeds). Under CI=true a missing peer fails its
# test (test-support/peers.rs), so this script then fails too when a peer
# is still missing after the install.
set -euo pipefail

need=()
command -v python3 >/dev/null || need+=(python3)
# The DKIM interop tests make a venv for dkimpy (scripts/python-venv.sh).
python3 -m venv --help >/dev/null 2>&1 || need+=(python3-venv)
command -v swaks >/dev/null || need+=(swaks)
# swaks needs these for --tls and --auth.
perl -MNet::SSLeay -e1 2>/dev/null || need+=(libnet-ssleay-perl)
perl -MIO::Socket::SSL -e1 2>/dev/null || need+=(libio-socket-ssl-perl)
perl -MAuthen::SASL -e1 2>/dev/null || need+=(libauthen-sasl-perl)
command -v smtp-source >/dev/null || need+=(postfix)
command -v openssl >/dev/null || need+=(openssl)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v prlimit >/dev/null || need+=(util-linux)
command -v mount >/dev/null || need+=(mount)

# Every peer a test calls must be there afterwards.
check_peers() {
  local missing=()
  for tool in python3 swaks smtp-source smtp-sink openssl systemd-analyze prlimit mount; do
    command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || missing+=("$tool")
  done
  python3 -m venv --help >/dev/null 2>&1 || missing+=(python3-venv)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "install-test-deps: still missing: ${missing[*]}" >&2
    [[ "${CI:-}" == "true" ]] && exit 1
  fi
  return 0
}

# Installing postfix replaces the host's mail system if another MTA runs
# it (Debian's MTAs conflict). Ask first; INSTALL_TEST_DEPS=1 or CI=true
# go ahead; without an answer (no terminal), postfix is left out.
other_mta() {
  local pkg
  for pkg in exim4-daemon-light exim4-daemon-heavy sendmail-bin opensmtpd nullmailer \
             msmtp-mta dma courier-mta citadel-mta; do
    if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
      echo "$pkg"
      return 0
    fi
  done
  return 1
}
if [[ " ${need[*]} " == *" postfix "* ]] && mta=$(other_mta); then
  consent="${INSTALL_TEST_DEPS:-}"
  [[ "${CI:-}" == "true" ]] && consent=1
  if [[ "$consent" != "1" && -t 0 ]]; then
    read -r -p "install-test-deps: this host runs $mta; installing postfix (for smtp-source/smtp-sink) replaces it. Install postfix? [y/N] " answer
    [[ "$answer" == [yY]* ]] && consent=1
  fi
  if [[ "$consent" != "1" ]]; then
    echo "install-test-deps: not installing postfix: this host runs $mta, which it would replace." \
         "Set INSTALL_TEST_DEPS=1 to install it anyway; the tests that need smtp-source/smtp-sink" \
         "skip without it (and fail under CI=true)." >&2
    kept=()
    for pkg in "${need[@]}"; do [[ "$pkg" != postfix ]] && kept+=("$pkg"); done
    need=("${kept[@]+"${kept[@]}"}")
  fi
fi

if [ ${#need[@]} -eq 0 ]; then
  check_peers
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-test-deps: missing ${need[*]}; run as root or install them (apt-get install ${need[*]})" >&2
  [[ "${CI:-}" == "true" ]] && exit 1
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# Postfix must not configure or start a mail system of its own.
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
check_peers
