# The Python venv the benchmarks compare against: DuckDB 1.5.5 and pyarrow, plus any packages
# a script names. Sourced by the bench scripts:
#
#   . "$(dirname "$0")/venv.sh"
#   bench_venv [PACKAGE ...]      # sets VENV (default ~/.cache/sluice-bench-venv) and $py
#   need_hyperfine                # installs hyperfine (Debian's package) when it is missing
#
# The venv is made, or completed, when a package is missing; `import` names are the packages'
# with dashes as underscores.
need_hyperfine() {
  command -v hyperfine >/dev/null && return
  echo "installing hyperfine" >&2
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -q hyperfine >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q hyperfine >/dev/null 2>&1; }
  fi
  command -v hyperfine >/dev/null || { echo "hyperfine is missing: install it (apt-get install hyperfine, or cargo install hyperfine)" >&2; exit 1; }
}
bench_venv() {
  VENV=${VENV:-$HOME/.cache/sluice-bench-venv}
  py="$VENV/bin/python"
  local imports="duckdb, pyarrow" p
  for p in "$@"; do
    p=${p%%==*}
    imports="$imports, ${p//-/_}"
  done
  if ! "$py" -c "import $imports; assert duckdb.__version__ == '1.5.5'" 2>/dev/null; then
    echo "making the venv $VENV" >&2
    [ -x "$py" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q pyarrow duckdb==1.5.5 "$@"
  fi
}
