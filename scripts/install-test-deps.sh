#!/usr/bin/env bash
# Installs what the test suite talks to, if it is missing: Python 3 (smtplib
# is a reference SMTP client), swaks, and Postfix's smtp-source/smtp-sink.
# Debian packages only; needs root (CI runs as root). Safe to run again.
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
[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "install-test-deps: missing ${need[*]}; run as root or install them (apt-get install ${need[*]})" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# Postfix must not configure or start a mail system of its own.
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
