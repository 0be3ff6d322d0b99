#!/usr/bin/env bash
# Installs and starts what Lapse's tests need on a fresh Debian machine of this kind:
# Podman (with runc) serving the Docker Engine API on a private socket, a local busybox
# image, a private Docker Engine (Debian's docker.io) in Swarm mode beside it for the swarm
# provider, openssh-server (the SSH tests run their own sshd), redis-server (the tests start their own on private ports), schemathesis and moto.
# Idempotent: a second run reuses what is already there.
# Source it (`. scripts/test-env.sh`) to get DOCKER_HOST, LAPSE_TEST_IMAGE, LAPSE_SWARM_HOST,
# LAPSE_SCHEMATHESIS and LAPSE_MOTO_SERVER exported.
set -euo pipefail

LAPSE_TEST_RUN=${LAPSE_TEST_RUN:-/run/lapse-test}
LAPSE_TEST_IMAGE=${LAPSE_TEST_IMAGE:-localhost/lapse-busybox:latest}
mkdir -p "$LAPSE_TEST_RUN"

need=()
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
[ -x /bin/busybox ] || need+=(busybox-static)
# The swarm provider's tests: a real Docker Engine (20.10, with containerd) in Swarm mode.
command -v dockerd >/dev/null || need+=(docker.io)
command -v redis-server >/dev/null || need+=(redis-server)
# The SSH exec tests start their own unprivileged sshd on loopback (never the system one).
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
if [ ${#need[@]} -gt 0 ]; then
  echo "test-env: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# crun refuses this machine's hybrid cgroups; the default nofile ulimit is above what it allows.
mkdir -p /etc/containers
conf=/etc/containers/containers.conf
if ! grep -q 'runtime = "runc"' "$conf" 2>/dev/null; then
  printf '[engine]\nruntime = "runc"\n[containers]\ndefault_ulimits = ["nofile=1024:1024","nproc=4096:4096"]\n' > "$conf"
fi

sock="$LAPSE_TEST_RUN/podman.sock"
export DOCKER_HOST="unix://$sock"
if ! curl -sf --unix-socket "$sock" http://d/v1.41/_ping >/dev/null 2>&1; then
  rm -f "$sock"
  nohup podman system service --time=0 "unix://$sock" >"$LAPSE_TEST_RUN/podman.log" 2>&1 &
  echo $! > "$LAPSE_TEST_RUN/podman.pid"
  for _ in $(seq 1 100); do
    curl -sf --unix-socket "$sock" http://d/v1.41/_ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -sf --unix-socket "$sock" http://d/v1.41/_ping >/dev/null || { echo "test-env: podman service did not answer"; cat "$LAPSE_TEST_RUN/podman.log"; exit 1; }
fi

# The busybox root filesystem both engines import, made once.
busybox_tar() {
  local root
  root=$(mktemp -d)
  mkdir -p "$root/bin" "$root/tmp" "$root/etc" "$root/proc" "$root/sys" "$root/dev"
  cp /bin/busybox "$root/bin/busybox"
  for app in $("$root/bin/busybox" --list); do
    [ -e "$root/bin/$app" ] || ln -s busybox "$root/bin/$app"
  done
  echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
  tar -C "$root" -cf "$LAPSE_TEST_RUN/busybox-rootfs.tar" .
  rm -rf "$root"
}

if ! podman image exists "$LAPSE_TEST_IMAGE"; then
  busybox_tar
  podman import --change 'CMD ["/bin/sh"]' "$LAPSE_TEST_RUN/busybox-rootfs.tar" "$LAPSE_TEST_IMAGE" >/dev/null
  echo "test-env: imported $LAPSE_TEST_IMAGE"
fi
export LAPSE_TEST_IMAGE

# A private dockerd (its own socket, data root and exec root; the host's defaults untouched)
# beside Podman, made a one-node Swarm manager, for the swarm provider's tests.
dsock="$LAPSE_TEST_RUN/docker.sock"
dping() { curl -sf --unix-socket "$dsock" http://d/_ping >/dev/null 2>&1; }
if ! dping; then
  if [ -f "$LAPSE_TEST_RUN/docker.pid" ] && kill -0 "$(cat "$LAPSE_TEST_RUN/docker.pid")" 2>/dev/null; then
    : # starting (another source of this script): wait for it below
  else
    rm -f "$dsock" "$LAPSE_TEST_RUN/docker.pid"
    nohup dockerd --data-root /var/cache/lapse-docker --exec-root "$LAPSE_TEST_RUN/docker-exec" \
      --host "unix://$dsock" --pidfile "$LAPSE_TEST_RUN/docker.pid" >"$LAPSE_TEST_RUN/docker.log" 2>&1 &
  fi
  for _ in $(seq 1 300); do dping && break; sleep 0.1; done
  dping || { echo "test-env: dockerd did not answer"; tail -20 "$LAPSE_TEST_RUN/docker.log"; exit 1; }
fi
export LAPSE_SWARM_HOST="unix://$dsock"
dk() { DOCKER_HOST="$LAPSE_SWARM_HOST" docker "$@"; }
if [ "$(dk info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null)" != "active" ]; then
  dk swarm init --advertise-addr 127.0.0.1 >/dev/null
  echo "test-env: swarm initialised on $dsock"
fi
if ! dk image inspect "$LAPSE_TEST_IMAGE" >/dev/null 2>&1; then
  [ -f "$LAPSE_TEST_RUN/busybox-rootfs.tar" ] || busybox_tar
  dk import --change 'CMD ["/bin/sh"]' "$LAPSE_TEST_RUN/busybox-rootfs.tar" "$LAPSE_TEST_IMAGE" >/dev/null
  echo "test-env: imported $LAPSE_TEST_IMAGE into the swarm's engine"
fi

# schemathesis (from PyPI), which the tests run against a live server's OpenAPI document.
venv=${LAPSE_TEST_VENV:-/var/cache/lapse-venv}
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "4.32.5"; then
  echo "test-env: installing schemathesis into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==4.32.5"
fi
export LAPSE_SCHEMATHESIS="$venv/bin/schemathesis"

# moto (from PyPI): the AWS provider's tests start their own `moto_server` on loopback ports.
moto_venv=${LAPSE_MOTO_VENV:-/var/cache/lapse-moto-venv}
if ! "$moto_venv/bin/pip" show moto 2>/dev/null | grep -q "^Version: 5.2.5$" || [ ! -x "$moto_venv/bin/moto_server" ]; then
  echo "test-env: installing moto into $moto_venv"
  python3 -m venv "$moto_venv"
  "$moto_venv/bin/pip" install -q --disable-pip-version-check "moto[server]==5.2.5"
fi
export LAPSE_MOTO_SERVER="$moto_venv/bin/moto_server"
