#!/usr/bin/env bash
# Runs `ansible-test sanity --python 3.11 --requirements` on this collection, offline apart from PyPI.
#
# Why it is done this way:
#  * ansible-test only works on a tree at a real path …/ansible_collections/skygrid/fabric/; it resolves
#    symlinks, so the checkout's collections/ansible_collections/skygrid/fabric link is no good. We copy the
#    collection's files (tracked + untracked-not-ignored, as `git ls-files -co --exclude-standard` lists them,
#    minus .venv and collections/) into such a tree under a temporary directory. No `git init` is needed
#    there: without a VCS ansible-test falls back to listing the tree, which holds exactly what we copied.
#  * ansible-test creates its sanity virtual environments without pip and bootstraps pip with a get-pip.py
#    it downloads from ci-files.testing.ansible.com, which these machines cannot reach. It first looks for a
#    cached copy at ~/.ansible/test/cache/get_pip_<pip version, dots as underscores>.py and runs it without
#    checking its content, so we put our own scripts/get_pip_bootstrap.py there (ensurepip + pip install
#    from PyPI). The pip version(s) are read from the installed ansible-test's get_venv_packages().
#
# Needs: scripts/install-deps.sh has been run (.venv with ansible-core), git, and python3.11 with ensurepip
# (Debian 12: python3.11 + python3-venv). Env: KEEP_TMP=1 keeps the temporary tree; extra arguments are
# passed to ansible-test (e.g. `scripts/sanity.sh --test pylint`). Results are copied back to tests/output/.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd -P)
VENV="$ROOT/.venv"
ANSIBLE_TEST="$VENV/bin/ansible-test"
NAMESPACE=$(sed -n 's/^namespace:[[:space:]]*\([A-Za-z0-9_]*\).*/\1/p' "$ROOT/galaxy.yml")
NAME=$(sed -n 's/^name:[[:space:]]*\([A-Za-z0-9_]*\).*/\1/p' "$ROOT/galaxy.yml")

die() { echo "sanity.sh: $*" >&2; exit 2; }
[[ -x $ANSIBLE_TEST ]] || die "$ANSIBLE_TEST not found; run scripts/install-deps.sh first"
command -v git >/dev/null || die "git is required (apt-get install git)"
[[ -n $NAMESPACE && -n $NAME ]] || die "cannot read namespace/name from galaxy.yml"

# --- 1. the pip bootstrap script, at every cache path this ansible-test may ask for -------------------------
ANSIBLE_TEST_PKG=$("$VENV/bin/python" -c 'import ansible_test, os; print(os.path.dirname(ansible_test.__file__))')
mapfile -t PIP_VERSIONS < <("$VENV/bin/python" - "$ANSIBLE_TEST_PKG/_internal/python_requirements.py" <<'EOF'
import ast, sys
# Collect every pip version named in get_venv_packages(): pip='X' keywords and {'pip': 'X'} dict entries.
tree = ast.parse(open(sys.argv[1]).read())
versions = set()
for func in ast.walk(tree):
    if isinstance(func, ast.FunctionDef) and func.name == 'get_venv_packages':
        for node in ast.walk(func):
            if isinstance(node, ast.keyword) and node.arg == 'pip' and isinstance(node.value, ast.Constant):
                versions.add(node.value.value)
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values):
                    if isinstance(key, ast.Constant) and key.value == 'pip' and isinstance(value, ast.Constant):
                        versions.add(value.value)
print('\n'.join(sorted(v for v in versions if isinstance(v, str) and v)))
EOF
)
((${#PIP_VERSIONS[@]})) || die "could not find the pip version(s) in $ANSIBLE_TEST_PKG/_internal/python_requirements.py"
CACHE_DIR="$HOME/.ansible/test/cache"
mkdir -p "$CACHE_DIR"
for version in "${PIP_VERSIONS[@]}"; do
  install -m 0644 "$ROOT/scripts/get_pip_bootstrap.py" "$CACHE_DIR/get_pip_${version//./_}.py"
  echo "==> pip $version bootstrap: $CACHE_DIR/get_pip_${version//./_}.py"
done

# --- 2. a copy of the collection under …/ansible_collections/<namespace>/<name>/ ----------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/sanity.XXXXXX")
if [[ ${KEEP_TMP:-0} == 1 ]]; then
  trap 'echo "==> kept $TMP"' EXIT
else
  trap 'rm -rf "$TMP"' EXIT
fi
DEST="$TMP/ansible_collections/$NAMESPACE/$NAME"
mkdir -p "$DEST"
(
  cd "$ROOT"
  # -c lists files deleted from the work tree too; keep only what exists (symlinks included).
  git ls-files -z -co --exclude-standard \
    | while IFS= read -r -d '' f; do
        case $f in .venv/* | collections/* | collections) continue ;; esac
        if [[ -e $f || -L $f ]]; then printf '%s\0' "$f"; fi
      done \
    | tar --null --no-recursion -T - -cf - \
    | tar -xf - -C "$DEST"
)
echo "==> copied $(find "$DEST" -type f -o -type l | wc -l) files to $DEST"

# --- 3. ansible-test sanity --------------------------------------------------------------------------------
cd "$DEST"
rc=0
# .venv/bin first on PATH: ansible-test looks up python3.11 there and finds the venv's interpreter.
PATH="$VENV/bin:$PATH" "$ANSIBLE_TEST" sanity --python 3.11 --requirements --color no "$@" || rc=$?

if [[ -d $DEST/tests/output ]]; then
  mkdir -p "$ROOT/tests/output"
  cp -a "$DEST/tests/output/." "$ROOT/tests/output/"
fi
if ((rc)); then
  echo "sanity.sh: ansible-test sanity FAILED (exit $rc)" >&2
else
  echo "==> ansible-test sanity passed"
fi
exit "$rc"
