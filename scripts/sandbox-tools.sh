#!/usr/bin/env bash
# The job sandbox's tools (workers/sandbox.py): bubblewrap, util-linux's setpriv and prlimit, and acl (staged
# uploads are opened to the sandbox's group by an ACL entry, never a chgrp). Installed from Debian's packages when
# missing; `make run` and scripts/services.sh call it. Without root it only says what is missing.
set -euo pipefail

missing=()
for pair in bwrap:bubblewrap setpriv:util-linux prlimit:util-linux setfacl:acl; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
if [ "$(id -u)" != 0 ]; then
  echo "sandbox-tools: jobs run in a sandbox that needs ${missing[*]}; install them (apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "sandbox-tools: installing ${missing[*]}" >&2
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }
