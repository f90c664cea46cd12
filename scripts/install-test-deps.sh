#!/usr/bin/env bash
# Installs what the test suite talks to, if it is missing: Python 3 (smtplib
# is a reference SMTP client), swaks, Postfix's smtp-source/smtp-sink,
# openssl, systemd-analyze, prlimit. Debian packages only; needs root (CI
# runs as root). Safe to run again. Under CI=true a missing peer fails its
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
