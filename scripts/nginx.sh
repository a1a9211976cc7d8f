#!/usr/bin/env bash
# nginx for the deployment tests (tests/deploy) and for a production host: installed from Debian's packages
# when missing. Prints the nginx binary's path. It does not start the distribution's nginx service.
set -euo pipefail

if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  echo "nginx.sh: installing nginx from Debian's packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  # policy-rc.d keeps the package from starting a system nginx on port 80 (tests run their own).
  started_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && started_policy=1
  fi
  apt-get update -qq
  apt-get install -y -qq nginx >/dev/null
  [ -n "$started_policy" ] && rm -f /usr/sbin/policy-rc.d
fi
command -v nginx 2>/dev/null || echo /usr/sbin/nginx
