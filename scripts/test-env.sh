#!/usr/bin/env bash
# Installs and starts what Lapse's tests need on a fresh Debian machine of this kind:
# Podman (with runc) serving the Docker Engine API on a private socket, a local busybox
# image, a private Docker Engine (Debian's docker.io) in Swarm mode beside it for the swarm
# provider, openssh-server (the SSH tests run their own sshd), redis-server (the tests start their own on private ports), promtool (Debian's prometheus: only its promtool is used), schemathesis and moto, chromium (the dashboard's browser tests) and npm if missing.
# Idempotent: a second run reuses what is already there.
# Source it (`. scripts/test-env.sh`) to get DOCKER_HOST, LAPSE_TEST_IMAGE, LAPSE_SWARM_HOST,
# LAPSE_SCHEMATHESIS, LAPSE_MOTO_SERVER and LAPSE_TEST_POSTGRES_URL exported.
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
# The PostgreSQL store's tests: a private cluster (below), never the system's.
[ -x /usr/lib/postgresql/15/bin/pg_ctl ] || need+=(postgresql)
# The SSH exec tests start their own unprivileged sshd on loopback (never the system one).
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
# The alert rules' checks and unit tests (ops/prometheus): promtool, from Debian's prometheus.
command -v promtool >/dev/null || need+=(prometheus)
# The dashboard's end-to-end tests drive Debian's Chromium (scripts/test-ui.sh); npm builds its assets.
command -v chromium >/dev/null || need+=(chromium)
command -v npm >/dev/null || need+=(nodejs npm)
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

# A private PostgreSQL cluster for the PostgreSQL store's tests: its own data dir (initdb
# once, reused), its own port on 127.0.0.1 only, its own socket dir, run by the `postgres`
# user; durable (fsync stays on). A role and a database for the tests, which make a fresh
# database per test through it (the role may CREATE DATABASE).
pg_bin=${LAPSE_TEST_PG_BIN:-/usr/lib/postgresql/15/bin}
pg_data=${LAPSE_TEST_PG_DATA:-/var/cache/lapse-postgres}
pg_port=${LAPSE_TEST_PG_PORT:-55432}
pg_sock="$LAPSE_TEST_RUN/postgres"
pg() { (cd / && runuser -u postgres -- "$@"); }
pg_ready() { "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port" -t 1 >/dev/null 2>&1; }
if ! pg_ready; then
  mkdir -p "$pg_sock" && chown postgres:postgres "$pg_sock"
  if [ ! -f "$pg_data/PG_VERSION" ]; then
    mkdir -p "$pg_data" && chown postgres:postgres "$pg_data" && chmod 700 "$pg_data"
    pg "$pg_bin/initdb" -D "$pg_data" -U postgres --auth-local=peer --auth-host=scram-sha-256 \
      --encoding=UTF8 --locale=C.UTF-8 >"$LAPSE_TEST_RUN/postgres-initdb.log" 2>&1 \
      || { echo "test-env: initdb failed"; tail -20 "$LAPSE_TEST_RUN/postgres-initdb.log"; exit 1; }
    cat >>"$pg_data/postgresql.conf" <<PGCONF
# lapse test cluster (scripts/test-env.sh)
listen_addresses = '127.0.0.1'
port = $pg_port
unix_socket_directories = '$pg_sock'
max_connections = 300
shared_buffers = 128MB
PGCONF
    echo "test-env: initialised a PostgreSQL cluster in $pg_data"
  fi
  # A failed start may be another source of this script starting it: wait for it below.
  pg "$pg_bin/pg_ctl" -D "$pg_data" -l "$pg_sock/postgres-$pg_port.log" -w -t 60 start >/dev/null 2>&1 || true
  for _ in $(seq 1 300); do pg_ready && break; sleep 0.1; done
  pg_ready || { echo "test-env: PostgreSQL did not start"; tail -20 "$pg_sock/postgres-$pg_port.log"; exit 1; }
fi
pg_user=lapse_test
pg_pass=lapse_test
psql_admin() { pg psql -X -q -h "$pg_sock" -p "$pg_port" -U postgres -d postgres -v ON_ERROR_STOP=1 -tA "$@"; }
if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = '$pg_user'")" != 1 ]; then
  psql_admin -c "CREATE ROLE $pg_user LOGIN CREATEDB PASSWORD '$pg_pass'"
fi
if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = 'lapse_test'")" != 1 ]; then
  psql_admin -c "CREATE DATABASE lapse_test OWNER $pg_user"
fi
export LAPSE_TEST_POSTGRES_URL="postgres://$pg_user:$pg_pass@127.0.0.1:$pg_port/lapse_test"
