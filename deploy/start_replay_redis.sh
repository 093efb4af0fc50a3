#!/usr/bin/env bash
# The replay's redis-server on the head (port 6380; Ray's GCS owns 6379), always with a
# password: generated once into ~/.masklam_redis_password (mode 600), never written into
# any file of the project. The learner reads MASKLAM_REDIS_URL from ~/.masklam_env.
# MASKLAM_REDIS_APPENDONLY=yes keeps the replay across a Redis restart (AOF, fsync every s).
set -euo pipefail
umask 077
test -s ~/.masklam_redis_password || openssl rand -hex 24 > ~/.masklam_redis_password
PASSWORD=$(cat ~/.masklam_redis_password)
REDISCLI_AUTH=$PASSWORD redis-cli -p 6380 shutdown nosave 2>/dev/null || true
mkdir -p ~/masklam-redis
printf 'port 6380\nbind 0.0.0.0\nprotected-mode yes\nrequirepass "%s"\nsave ""\nappendonly %s\ndir %s\ndaemonize yes\nmaxmemory %s\nmaxmemory-policy noeviction\n' \
  "$PASSWORD" "${MASKLAM_REDIS_APPENDONLY:-no}" "$HOME/masklam-redis" "${MASKLAM_REDIS_MAXMEMORY:-48gb}" | redis-server -
echo "export MASKLAM_REDIS_URL=redis://:$PASSWORD@$(hostname -I | cut -d' ' -f1):6380/0" > ~/.masklam_env
