#!/usr/bin/env bash
# Starts the servers the dedup stores are tested against: PostgreSQL and Redis,
# from Debian's packages, listening on 127.0.0.1 only. Safe to run again: it
# installs and creates only what is missing, and leaves running servers alone.
# It also installs Prometheus (Debian's package) for examples/metrics, whose
# test starts its own server on 127.0.0.1: the package's system service is
# not started here.
#
# It prints `export` lines on stdout (everything else goes to stderr), so:
#
#   eval "$(bash .ci/services.sh)"
#
# sets KDELIVER_POSTGRES_URL, KDELIVER_REDIS_ADDR, KDELIVER_PG_CLUSTER (for
# the outage test, which stops and restarts the cluster) and
# KDELIVER_REQUIRE_SERVICES=1, which makes the tests fail rather than skip
# when a server is missing, and KDELIVER_REQUIRE_PROMETHEUS=1, the same for
# the prometheus binary.
set -euo pipefail

log() { echo "services: $*" >&2; }

pg_user=kdeliver
pg_pass=kdeliver
pg_db=kdeliver
pg_port=${KDELIVER_PG_PORT:-5432}
redis_port=${KDELIVER_REDIS_PORT:-6379}

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

if ! command -v redis-server >/dev/null || ! command -v pg_ctlcluster >/dev/null || [ -z "$(pg_bin)" ]; then
	log "installing postgresql and redis-server"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >&2
	apt-get install -y -qq --no-install-recommends postgresql redis-server >&2
fi

if ! command -v prometheus >/dev/null; then
	# Only the binary is used. Where a policy-rc.d forbids it (containers)
	# the package does not start its service; where one starts, it listens
	# on 9090, which the test does not use.
	log "installing prometheus"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >&2
	apt-get install -y -qq --no-install-recommends prometheus >&2
fi
log "$(prometheus --version 2>&1 | sed -n 1p)"

# PostgreSQL: the Debian cluster of the newest installed version.
pg_ver=$(basename "$(dirname "$(pg_bin)")")
if ! pg_lsclusters -h | awk '{print $1, $2}' | grep -qx "$pg_ver main"; then
	log "creating cluster $pg_ver/main"
	pg_createcluster --port "$pg_port" "$pg_ver" main >&2
fi
# Settings go in conf.d (included by Debian's postgresql.conf).
cat >"/etc/postgresql/$pg_ver/main/conf.d/kdeliver.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $pg_port
fsync = off # test data only: speed over durability across OS crashes
CONF
if ! pg_lsclusters -h | awk -v v="$pg_ver" '$1 == v && $2 == "main" {print $4}' | grep -q online; then
	log "starting PostgreSQL $pg_ver on 127.0.0.1:$pg_port"
	pg_ctlcluster "$pg_ver" main start >&2
fi
for _ in $(seq 60); do
	pg_isready -q -h 127.0.0.1 -p "$pg_port" && break
	sleep 0.5
done
pg_isready -h 127.0.0.1 -p "$pg_port" >&2
runuser -u postgres -- psql -q -p "$pg_port" -v ON_ERROR_STOP=1 >&2 <<SQL
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', '$pg_user', '$pg_pass')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$pg_user') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', '$pg_db', '$pg_user')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$pg_db') \gexec
SQL

# Redis: no persistence, loopback only.
if ! redis-cli -h 127.0.0.1 -p "$redis_port" ping >/dev/null 2>&1; then
	log "starting Redis on 127.0.0.1:$redis_port"
	redis-server --bind 127.0.0.1 --port "$redis_port" --daemonize yes --save '' --appendonly no \
		--logfile /tmp/kdeliver-redis.log >&2
	for _ in $(seq 40); do
		redis-cli -h 127.0.0.1 -p "$redis_port" ping >/dev/null 2>&1 && break
		sleep 0.25
	done
fi
redis-cli -h 127.0.0.1 -p "$redis_port" ping >&2

cat <<ENV
export KDELIVER_POSTGRES_URL='postgres://$pg_user:$pg_pass@127.0.0.1:$pg_port/$pg_db?sslmode=disable'
export KDELIVER_PG_CLUSTER='$pg_ver main'
export KDELIVER_REDIS_ADDR='127.0.0.1:$redis_port'
export KDELIVER_REQUIRE_SERVICES=1
export KDELIVER_REQUIRE_PROMETHEUS=1
ENV
