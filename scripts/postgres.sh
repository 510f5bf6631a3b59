#!/usr/bin/env bash
# CI: make sure a PostgreSQL server answers at 127.0.0.1:5432 (user postgres, trust on loopback)
# for tests/test_batches.py, starting one if none does: the clusters of Debian's postgresql-common
# (pg_ctlcluster), else a throwaway cluster made with initdb in $PG_SCRATCH.
set -euo pipefail
PG_SCRATCH=${PG_SCRATCH:-/tmp/extractor-ci-postgres}

answers() { (echo > /dev/tcp/127.0.0.1/5432) >/dev/null 2>&1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if answers; then echo "postgres: already answering on 127.0.0.1:5432"; exit 0; fi
if command -v pg_lsclusters >/dev/null && [ -n "$(pg_lsclusters -h 2>/dev/null)" ]; then
  pg_lsclusters -h | while read -r version cluster _; do as_root pg_ctlcluster "$version" "$cluster" start || true; done
else
  bin=$(dirname "$(command -v pg_ctl || ls /usr/lib/postgresql/*/bin/pg_ctl | tail -1)")
  run=(); [ "$(id -u)" = 0 ] && run=(runuser -u postgres --)
  mkdir -p "$PG_SCRATCH"; [ "$(id -u)" = 0 ] && chown postgres "$PG_SCRATCH"
  [ -f "$PG_SCRATCH/data/PG_VERSION" ] || "${run[@]}" "$bin/initdb" -D "$PG_SCRATCH/data" -U postgres --auth=trust >/dev/null
  "${run[@]}" "$bin/pg_ctl" -D "$PG_SCRATCH/data" -o "-p 5432 -k $PG_SCRATCH -c listen_addresses=127.0.0.1" \
    -l "$PG_SCRATCH/log" -w start
fi
for _ in $(seq 30); do answers && { echo "postgres: answering on 127.0.0.1:5432"; exit 0; }; sleep 1; done
echo "postgres: nothing answers on 127.0.0.1:5432" >&2; exit 1
