#!/usr/bin/env bash
# Install what `bench_watch.py` needs to put ZooKeeper (kazoo's Election) and
# etcd's election API next to lockmgr's leader election (benchmarks/RESULTS.md,
# "Issue 15"):
#
#   bash benchmarks/install_watch_compare_deps.sh        # from the repository root
#
# * Debian packages zookeeper (its jars and zkServer; the benchmark starts a
#   throwaway standalone server on 127.0.0.1 itself, not the package's
#   service) and etcd-server, each only if missing.
# * The Python client kazoo (pip), if it does not import.
#
# Needs root (or sudo) for apt-get. PYTHON chooses the interpreter whose pip
# is used (default: python).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
pkgs=()
[ -d /usr/share/zookeeper ] || pkgs+=(zookeeper)
command -v etcd >/dev/null 2>&1 || pkgs+=(etcd-server)
if [ ${#pkgs[@]} -gt 0 ]; then
    SUDO=()
    [ "$(id -u)" = 0 ] || SUDO=(sudo)
    "${SUDO[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
fi
"$PY" -c "import kazoo" 2>/dev/null || "$PY" -m pip install -q kazoo
