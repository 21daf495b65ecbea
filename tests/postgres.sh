#!/usr/bin/env bash
# A throwaway PostgreSQL database for tests/flows/test_week.py's PostgreSQL run (Prefect's production database).
# Debian's postgresql package (installed when missing, as root); prints the SQLAlchemy URL to pass as
# IMGCLUST_TEST_POSTGRES_URL, e.g.:
#   IMGCLUST_TEST_POSTGRES_URL=$(bash tests/postgres.sh) .venv/bin/python -m pytest tests/flows/test_week.py -m slow -k postgres
set -euo pipefail
if ! command -v pg_ctlcluster >/dev/null; then
  apt-get update -qq >&2 && apt-get install -y -qq postgresql >&2
fi
ver=$(ls /usr/lib/postgresql | sort -n | tail -1)
pg_ctlcluster "$ver" main start >&2 2>/dev/null || true
for _ in $(seq 30); do su postgres -c "pg_isready -q" && break; sleep 1; done
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='imgclust'\"" | grep -q 1 ||
  su postgres -c "psql -qc \"CREATE ROLE imgclust LOGIN PASSWORD 'imgclust'\"" >&2
su postgres -c "dropdb --if-exists prefect_week && createdb -O imgclust prefect_week" >&2
echo "postgresql+asyncpg://imgclust:imgclust@127.0.0.1:5432/prefect_week"
