# shellcheck shell=bash
# The pinned Python environments of the scripts (the emulator, the template
# checkers, the e-invoice validators, the Parquet reader, the deploy tools),
# made once per requirements file and Python version and shared by every
# checkout on the machine, the way pip shares its wheel cache: a clean
# clone on a machine that ran the tests before links the environment
# instead of installing it again (a minute or more of the test command).
#
#   source scripts/lib/venv.sh
#   venv_ensure "$REPO/.venv-lint" scripts/requirements-lint.txt [PIP_ARGS...]
#
# The environment lives in ${TEM_VENV_CACHE:-~/.cache/tem/venvs}/NAME-KEY,
# KEY a hash of the Python version, the requirements file and the pip
# arguments, so a changed pin makes a new one; $LINK is a symlink to it.
# It is marked complete only after pip succeeded, so an interrupted install
# is started again, and one installer runs at a time.

venv_ensure() {
  local link="$1" reqs="$2"
  shift 2
  local python="${PYTHON:-python3}" key cache name dir
  key="$( { "$python" --version 2>&1; cat "$reqs"; printf '%s\n' "$@" "${VENV_UPGRADE_PIP:-}"; } | sha256sum | cut -c1-16)"
  cache="${TEM_VENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tem/venvs}"
  name="$(basename "$link")"
  dir="$cache/${name#.}-$key"
  mkdir -p "$cache"
  (
    flock 8
    if [[ ! -f "$dir/.complete" ]]; then
      rm -rf "$dir"
      echo "installing $reqs into $dir" >&2
      "$python" -m venv "$dir"
      if [[ -n "${VENV_UPGRADE_PIP:-}" ]]; then
        "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
      fi
      "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "$@" -r "$reqs" >&2
      touch "$dir/.complete"
    fi
  ) 8>"$cache/.lock"
  if [[ "$(readlink "$link" 2>/dev/null || true)" != "$dir" ]]; then
    # An environment made inside the checkout by an earlier version of the
    # scripts gives way to the link.
    if [[ -e "$link" && ! -L "$link" ]]; then rm -rf "$link"; fi
    ln -sfn "$dir" "$link"
  fi
}
