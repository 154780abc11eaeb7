"""The import rules of docs/ARCHITECTURE.md, checked on the source (ast), so that the document stays true.

Each rule names the files it covers and what they must never import; a rule that matches no file fails too,
so a rename cannot silently turn a rule off."""

from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PKG = "ansible_collections.skygrid.fabric.plugins"
MU = PKG + ".module_utils"

# (rule, files it covers (a path prefix), forbidden module prefixes, forbidden builtin calls)
RULES = [
    ("module_utils never imports a module or a plugin",
     "plugins/module_utils/", (PKG + ".modules", PKG + ".filter", PKG + ".action"), ()),
    ("the base (errors, reconcile, module_base) imports no domain package",
     "plugins/module_utils/errors.py", (MU + ".",), ()),
    ("the base (errors, reconcile, module_base) imports no domain package",
     "plugins/module_utils/reconcile.py", (MU + ".",), ()),
    ("the base (errors, reconcile, module_base) imports no domain package",
     "plugins/module_utils/module_base.py", (MU + ".batch", MU + ".libvirt", MU + ".vm", MU + ".images", MU + ".ipam",
                                             MU + ".planning"), ()),
    ("batch/ never imports libvirt code",
     "plugins/module_utils/batch/", ("libvirt", MU + ".libvirt", MU + ".vm", MU + ".images"), ()),
    ("planning/ is pure: no libvirt, no subprocess, no file I/O",
     "plugins/module_utils/planning/", ("libvirt", MU + ".libvirt", MU + ".vm", MU + ".images", MU + ".ipam",
                                        MU + ".batch.runner", "subprocess", "os", "shutil", "tempfile", "sqlite3",
                                        "socket", "pathlib", "io"), ("open",)),
    ("the libvirt binding is imported in one place, libvirt/connection.py",
     "plugins/", ("libvirt",), ()),
    ("ipam/ knows nothing of libvirt or batch systems",
     "plugins/module_utils/ipam/", ("libvirt", MU + ".libvirt", MU + ".vm", MU + ".images", MU + ".batch"), ()),
]
# The one file allowed to break a rule, and why.
EXEMPT = {
    ("the libvirt binding is imported in one place, libvirt/connection.py", "plugins/module_utils/libvirt/connection.py"),
}


def python_files(prefix):
    if prefix.endswith(".py"):
        return [prefix] if os.path.isfile(os.path.join(ROOT, prefix)) else []
    found = []
    for directory, _dirs, files in os.walk(os.path.join(ROOT, prefix)):
        found += [os.path.relpath(os.path.join(directory, name), ROOT) for name in files if name.endswith(".py")]
    return sorted(found)


def imports_and_calls(path):
    """Every module the file imports (``from X import y`` gives X and X.y) and every bare name it calls."""
    with open(os.path.join(ROOT, path), encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), path)
    modules, calls = [], []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.append((node.module, node.lineno))
            modules += [(node.module + "." + alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            calls.append((node.func.id, node.lineno))
    return modules, calls


def matches(module, prefix):
    return module == prefix.rstrip(".") or module.startswith(prefix if prefix.endswith(".") else prefix + ".")


@pytest.mark.parametrize("rule,prefix,forbidden,forbidden_calls", RULES, ids=["%d" % i for i in range(len(RULES))])
def test_no_forbidden_import(rule, prefix, forbidden, forbidden_calls):
    files = python_files(prefix)
    assert files, "rule %r covers no file (%s): update the rule or docs/ARCHITECTURE.md" % (rule, prefix)
    broken = []
    for path in files:
        if (rule, path) in EXEMPT:
            continue
        modules, calls = imports_and_calls(path)
        broken += ["%s:%d imports %s" % (path, line, module) for module, line in modules
                   if any(matches(module, bad) for bad in forbidden)]
        broken += ["%s:%d calls %s()" % (path, line, name) for name, line in calls if name in forbidden_calls]
    assert not broken, "%s:\n  %s" % (rule, "\n  ".join(broken))


def test_the_checker_sees_a_forbidden_import(tmp_path, monkeypatch):
    """The rules are only worth something if a violation is found: plant one and look."""
    planted = tmp_path / "plugins" / "module_utils" / "planning"
    planted.mkdir(parents=True)
    (planted / "bad.py").write_text("import subprocess\nfrom %s.libvirt.connection import connection\n"
                                    "def f(p):\n    return open(p)\n" % MU)
    monkeypatch.setitem(globals(), "ROOT", str(tmp_path))
    rule = RULES[5]
    with pytest.raises(AssertionError) as failure:
        test_no_forbidden_import(*rule)
    text = str(failure.value)
    assert "imports subprocess" in text and "libvirt.connection" in text and "calls open()" in text


def test_no_import_cycle_between_module_utils_files():
    """Domains may lean on each other (vm/ on libvirt/, libvirt/pools.py on vm/spec.py), but no chain of
    module_utils files imports itself back: every file can be loaded and tested on its own."""
    files = python_files("plugins/module_utils/")
    module_of = {path: MU + "." + path[len("plugins/module_utils/"):-3].replace("/", ".").replace(".__init__", "")
                 for path in files}
    known = set(module_of.values())
    graph = {}
    for path, module in module_of.items():
        imported = {name for name, _line in imports_and_calls(path)[0] if name in known and name != module}
        graph[module] = imported
    cycles = []

    def visit(module, stack):
        if module in stack:
            cycles.append(" -> ".join(stack[stack.index(module):] + [module]))
            return
        if module in done:
            return
        for target in sorted(graph.get(module, ())):
            visit(target, stack + [module])
        done.add(module)

    done = set()
    for module in sorted(graph):
        visit(module, [])
    assert not cycles, "import cycles:\n  " + "\n  ".join(cycles)
