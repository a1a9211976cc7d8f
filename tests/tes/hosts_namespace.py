"""Run a command with a test's own /etc/hosts: `unshare --mount --propagation private -- python hosts_namespace.py
HOSTS_FILE COMMAND...` bind-mounts HOSTS_FILE over /etc/hosts inside that new mount namespace (the machine's
own /etc/hosts is untouched) and then exec()s COMMAND. Lets a test make a name resolve to 127.0.0.1 for one
worker process, as a hostile DNS answer would, without a DNS server."""
from __future__ import annotations

import os
import subprocess
import sys

if __name__ == "__main__":
    hosts, command = sys.argv[1], sys.argv[2:]
    subprocess.run(["mount", "--bind", hosts, "/etc/hosts"], check=True)
    os.execvp(command[0], command)
