#!/usr/bin/env bash
# Installs what is missing (cached outside the clone) and starts the local stack, all
# bound to 127.0.0.1:
#   PostgreSQL 15 (wal_level=logical) :15432   tansu Kafka broker :19092
#   PostgreSQL 15 with TLS only (certificates made here by openssl) :15433
#   moto S3 :19000 (buckets from localstack/)   tributary registry (schema registry) :18081
# then writes infra/env.sh. Running it again while the stack is up changes nothing.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
mkdir -p "$TRIBUTARY_STATE" "$PIDS"
chmod 755 "$TRIBUTARY_STATE"

# --- tools ----------------------------------------------------------------------------
"$INFRA_DIR/python.sh"
if [ ! -x "$TANSU_BIN" ]; then
  log "installing tansu $TANSU_VERSION (one-off, ~7 min)"
  # Its own temporary build directory, not the project's shared one.
  env -u CARGO_TARGET_DIR cargo install tansu --version "$TANSU_VERSION" --locked --no-default-features \
    --features dynostore --root "$TRIBUTARY_CACHE/tansu-$TANSU_VERSION" \
    >"$TRIBUTARY_STATE/tansu-install.log" 2>&1 \
    || { tail -n 40 "$TRIBUTARY_STATE/tansu-install.log" >&2; die "tansu install failed"; }
fi
# promtool (checks deploy/monitoring's alert rules): taken out of Debian's prometheus
# package without installing it, so no Prometheus server is set up or started.
if [ ! -x "$PROMTOOL" ]; then
  log "installing promtool from Debian's prometheus package"
  tmp=$(mktemp -d)
  (cd "$tmp" && { apt-get download prometheus >/dev/null 2>&1 \
    || { apt-get update >/dev/null 2>&1 && apt-get download prometheus >/dev/null 2>&1; }; }) \
    || die "apt-get download prometheus failed"
  dpkg -x "$tmp"/prometheus_*.deb "$tmp/x"
  mkdir -p "$(dirname "$PROMTOOL")"
  cp "$tmp/x/usr/bin/promtool" "$PROMTOOL"
  rm -rf "$tmp"
fi
# librdkafka (built from source by the rdkafka crate) links the system OpenSSL.
[ -f /usr/include/openssl/ssl.h ] || die "OpenSSL headers not found (apt-get install libssl-dev)"
command -v openssl >/dev/null || die "openssl not found (apt-get install openssl)"
for tool in pg_ctl initdb psql pgbench pg_recvlogical; do
  [ -x "$PG_BIN/$tool" ] || die "PostgreSQL 15's $tool not found in $PG_BIN (apt-get install postgresql-15)"
done

# --- PostgreSQL -------------------------------------------------------------------------
# A new cluster in $1 whose user postgres has the password PG_PASSWORD.
init_cluster() {
  local pwfile
  log "initialising a PostgreSQL cluster in $1"
  mkdir -p "$1"
  chown postgres: "$1"
  pwfile=$(mktemp)
  echo "$PG_PASSWORD" >"$pwfile"
  chown postgres: "$pwfile"
  runuser -u postgres -- "$PG_BIN/initdb" -D "$1" -U postgres --pwfile="$pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$pwfile"
}
pgdata="$TRIBUTARY_STATE/pg"
[ -f "$pgdata/PG_VERSION" ] || init_cluster "$pgdata"
if ! pid_alive postgres; then
  mkdir -p "$TRIBUTARY_STATE/pg-socket"
  chown postgres: "$TRIBUTARY_STATE/pg-socket"
  touch "$TRIBUTARY_STATE/postgres.log"
  chown postgres: "$TRIBUTARY_STATE/postgres.log"
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$pgdata" -l "$TRIBUTARY_STATE/postgres.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -c unix_socket_directories=$TRIBUTARY_STATE/pg-socket \
        -c wal_level=logical -c max_replication_slots=32 -c max_wal_senders=32 \
        -c max_connections=200 -c fsync=on" start >/dev/null \
    || { tail -n 30 "$TRIBUTARY_STATE/postgres.log" >&2; die "PostgreSQL did not start"; }
  head -n 1 "$pgdata/postmaster.pid" >"$PIDS/postgres.pid"
  log "PostgreSQL up on 127.0.0.1:$PG_PORT"
fi

# --- PostgreSQL with TLS only -------------------------------------------------------------
# A second cluster that refuses unencrypted connections (as RDS with rds.force_ssl):
# a test CA signs its certificate (for localhost and 127.0.0.1) and a client
# certificate for the role tributary_cert, which logs in by certificate alone.
certs="$TRIBUTARY_STATE/pg-tls-certs"
if [ ! -f "$certs/client.ext" ]; then
  log "making TLS certificates in $certs"
  rm -rf "$certs" && mkdir -p "$certs"
  (
    cd "$certs"
    quiet() { "$@" >/dev/null 2>&1 || die "openssl failed: $*"; }
    quiet openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=Tributary test CA" \
      -keyout ca.key -out ca.crt
    quiet openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=Some other CA" \
      -keyout other-ca.key -out other-ca.crt
    quiet openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >server.ext
    quiet openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile server.ext -out server.crt
    quiet openssl req -newkey rsa:2048 -nodes -subj "/CN=tributary_cert" -keyout client.key -out client.csr
    printf 'extendedKeyUsage=clientAuth\n' >client.ext
    quiet openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile client.ext -out client.crt
    chmod 600 ./*.key
    chown postgres: server.key
  )
fi
pgtls="$TRIBUTARY_STATE/pg-tls"
if [ ! -f "$pgtls/PG_VERSION" ]; then
  init_cluster "$pgtls"
  cat >"$pgtls/pg_hba.conf" <<HBA
local   all          all                           trust
hostssl all          tributary_cert 127.0.0.1/32   cert
hostssl replication  tributary_cert 127.0.0.1/32   cert
hostssl all          all            127.0.0.1/32   scram-sha-256
hostssl replication  all            127.0.0.1/32   scram-sha-256
HBA
  chown postgres: "$pgtls/pg_hba.conf"
fi
if ! pid_alive postgres-tls; then
  mkdir -p "$TRIBUTARY_STATE/pg-tls-socket"
  chown postgres: "$TRIBUTARY_STATE/pg-tls-socket"
  touch "$TRIBUTARY_STATE/postgres-tls.log"
  chown postgres: "$TRIBUTARY_STATE/postgres-tls.log"
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$pgtls" -l "$TRIBUTARY_STATE/postgres-tls.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PG_TLS_PORT -c unix_socket_directories=$TRIBUTARY_STATE/pg-tls-socket \
        -c wal_level=logical -c max_replication_slots=16 -c max_wal_senders=16 -c shared_buffers=64MB \
        -c ssl=on -c ssl_cert_file=$certs/server.crt -c ssl_key_file=$certs/server.key \
        -c ssl_ca_file=$certs/ca.crt" start >/dev/null \
    || { tail -n 30 "$TRIBUTARY_STATE/postgres-tls.log" >&2; die "PostgreSQL (TLS) did not start"; }
  head -n 1 "$pgtls/postmaster.pid" >"$PIDS/postgres-tls.pid"
  "$PG_BIN/psql" -X -q -h "$TRIBUTARY_STATE/pg-tls-socket" -p "$PG_TLS_PORT" -U postgres -d postgres -c \
    "DO \$\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tributary_cert') THEN
       CREATE ROLE tributary_cert LOGIN SUPERUSER REPLICATION; END IF; END \$\$" \
    || die "could not create the role tributary_cert"
  log "PostgreSQL (TLS only) up on 127.0.0.1:$PG_TLS_PORT"
fi

# --- tansu (Kafka protocol) -------------------------------------------------------------
if ! pid_alive tansu; then
  port_open "$KAFKA_PORT" && die "port $KAFKA_PORT is taken by a process up.sh did not start"
  nohup "$TANSU_BIN" broker \
    --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --storage-engine memory://tansu/ >"$TRIBUTARY_STATE/tansu.log" 2>&1 &
  echo $! >"$PIDS/tansu.pid"
  wait_port "$KAFKA_PORT" tansu "$TRIBUTARY_STATE/tansu.log"
  log "tansu up on 127.0.0.1:$KAFKA_PORT"
fi

# --- moto (S3) --------------------------------------------------------------------------
if ! pid_alive moto; then
  port_open "$S3_PORT" && die "port $S3_PORT is taken by a process up.sh did not start"
  nohup "$VENV/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT" >"$TRIBUTARY_STATE/moto.log" 2>&1 &
  echo $! >"$PIDS/moto.pid"
  wait_port "$S3_PORT" moto "$TRIBUTARY_STATE/moto.log"
  log "moto S3 up on 127.0.0.1:$S3_PORT"
fi

# --- schema registry (Tributary's own) ---------------------------------------------------
if ! pid_alive registry; then
  port_open "$REGISTRY_PORT" && die "port $REGISTRY_PORT is taken by a process up.sh did not start"
  log "building tributary for the schema registry"
  # The test build's binary: building the bin alone would resolve features without the
  # dev-dependencies and compile every dependency a second time.
  (cd "$REPO_DIR" && cargo test --locked --quiet --no-run 2>/dev/null) || die "cargo build failed (run cargo test --no-run)"
  cp "$CARGO_TARGET_DIR/debug/tributary" "$TRIBUTARY_STATE/tributary-registry"
  nohup "$TRIBUTARY_STATE/tributary-registry" registry --listen "127.0.0.1:$REGISTRY_PORT" \
    --store "$TRIBUTARY_STATE/registry" >"$TRIBUTARY_STATE/registry.log" 2>&1 &
  echo $! >"$PIDS/registry.pid"
  wait_port "$REGISTRY_PORT" registry "$TRIBUTARY_STATE/registry.log"
  log "schema registry up on 127.0.0.1:$REGISTRY_PORT (store $TRIBUTARY_STATE/registry)"
fi

# --- environment for tests and users ----------------------------------------------------
cat >"$INFRA_DIR/env.sh" <<ENV
# Written by infra/up.sh: source it to talk to the local stack.
export TRIBUTARY_PG_DSN="host=127.0.0.1 port=$PG_PORT user=postgres password=$PG_PASSWORD dbname=postgres"
# TLS only; the CA, a second CA and tributary_cert's client certificate are in TRIBUTARY_PG_TLS_CERTS.
export TRIBUTARY_PG_TLS_DSN="host=localhost port=$PG_TLS_PORT user=postgres password=$PG_PASSWORD dbname=postgres sslmode=verify-full sslrootcert=$certs/ca.crt"
export TRIBUTARY_PG_TLS_CERTS="$certs"
export KAFKA_BROKERS="127.0.0.1:$KAFKA_PORT"
export SCHEMA_REGISTRY_URL="http://127.0.0.1:$REGISTRY_PORT"
export AWS_ENDPOINT_URL="http://127.0.0.1:$S3_PORT"
export AWS_ACCESS_KEY_ID="tributary"
export AWS_SECRET_ACCESS_KEY="tributary-secret"
export AWS_REGION="us-east-1"
export AWS_ALLOW_HTTP="true"
export TRIBUTARY_PYTHON="$VENV/bin/python"
export TRIBUTARY_PROMTOOL="$PROMTOOL"
export TRIBUTARY_STATE="$TRIBUTARY_STATE"
export TRIBUTARY_CACHE="$TRIBUTARY_CACHE"
ENV
source "$INFRA_DIR/env.sh"
"$REPO_DIR/localstack/init/ready.d/10-buckets.sh" >&2

# A last check that each service answers, so a broken stack fails here and not in a test.
PGPASSWORD=$PG_PASSWORD "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -Atc 'SHOW wal_level' \
  | grep -qx logical || die "PostgreSQL is not running with wal_level=logical"
port_open "$KAFKA_PORT" || die "tansu is not answering"
log "stack up; environment in infra/env.sh"
