#!/usr/bin/env bash
# Install what `bench_service.py --only compare` needs to put Redis and
# PostgreSQL next to lockmgr (benchmarks/RESULTS.md):
#
#   bash benchmarks/install_compare_deps.sh        # from the repository root
#
# * Debian packages redis-server and postgresql (apt-get, non-interactive),
#   each only if its binary is missing. The packages' own services are not
#   needed: the benchmark starts a throwaway redis-server and a throwaway
#   initdb'd PostgreSQL on 127.0.0.1 itself (Debian puts initdb/pg_ctl in
#   /usr/lib/postgresql/<version>/bin, where the benchmark looks for them).
#   The postgresql package also creates the 'postgres' user, which the
#   benchmark runs PostgreSQL as when it is run as root (postgres refuses root).
# * The python clients: the requirements of the `bench` extra of
#   pyproject.toml (redis, psycopg[binary]), read from pyproject.toml; the
#   project itself is not installed (the benchmarks run from the tree; use
#   `pip install -e ".[bench]"` for both at once).
#
# Needs root (or sudo) for apt-get. PYTHON chooses the interpreter whose pip
# is used (default: python).
set -euo pipefail
cd "$(dirname "$0")/.."

have_pg() {
    command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1 && return 0
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null
}

pkgs=()
command -v redis-server >/dev/null 2>&1 || pkgs+=(redis-server)
have_pg || pkgs+=(postgresql)
if ! getent passwd postgres >/dev/null && [ "$(id -u)" = 0 ]; then
    # binaries present but no 'postgres' user (e.g. hand-copied binaries):
    # the package creates the user
    [[ " ${pkgs[*]-} " == *" postgresql "* ]] || pkgs+=(postgresql)
fi

if [ ${#pkgs[@]} -gt 0 ]; then
    SUDO=()
    [ "$(id -u)" = 0 ] || SUDO=(sudo)
    echo "apt-get install ${pkgs[*]}"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}"
else
    echo "redis-server and PostgreSQL binaries already installed"
fi

PYTHON=${PYTHON:-python}
mapfile -t reqs < <("$PYTHON" - <<'PY'
import re
try:
    import tomllib
    with open("pyproject.toml", "rb") as f:
        print("\n".join(tomllib.load(f)["project"]["optional-dependencies"]["bench"]))
except ImportError:          # python < 3.11: the list is simple enough to read
    text = open("pyproject.toml").read()
    body = re.search(r"^bench = \[(.*?)\]", text, re.S | re.M).group(1)
    print("\n".join(re.findall(r'"([^"]+)"', body)))
PY
)
echo "$PYTHON -m pip install ${reqs[*]}"
"$PYTHON" -m pip install -q "${reqs[@]}"
