# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A hypervisor host's own configuration in one pass: ``key = value`` settings in config files
(libvirt's qemu.conf and libvirtd.conf), whole files, kernel tunables and device node ownership, then
the commands that put the written configuration to work (start a daemon, apply firewall rules).

One module call checks all of it, so a converge that changes nothing costs one process, not one per
line (each Ansible task costs a fork, a Python start and its imports). Files are written atomically
(a temporary file beside the target, fsync, rename), so a kill leaves the old or the new file.
"""

from __future__ import annotations

import grp
import os
import re
import stat
import subprocess

from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
from ansible_collections.skygrid.fabric.plugins.module_utils.files import write_atomic

SETTING_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
KERNEL_ROOTS = ("/sys/", "/proc/sys/")


def parse_mode(value, field):
    """'0644' -> 0o644; anything else is an error naming the field."""
    if value is None:
        return None
    text = str(value)
    if not re.match(r"0?[0-7]{3,4}\Z", text):
        raise FabricError("%r is not an octal file mode; write it quoted, like '0644'" % value, field=field)
    return int(text, 8)


def apply_settings(text, values):
    """``text`` with each ``key = value`` line set: the last line that sets the key (or a commented-out
    ``#key =`` line) is replaced, as lineinfile with a regexp would; a key not there is appended."""
    lines = text.splitlines()
    for key, value in values.items():
        wanted = "%s = %s" % (key, value)
        pattern = re.compile(r"^#?\s*%s\s*=" % re.escape(key))
        matches = [index for index, line in enumerate(lines) if pattern.match(line)]
        if matches:
            lines[matches[-1]] = wanted
        else:
            lines.append(wanted)
    return "\n".join(lines) + "\n" if lines else ""


def settings_of(text, keys):
    """The value each key has in ``text`` (the last uncommented line wins), None where unset."""
    found = dict.fromkeys(keys)
    for line in text.splitlines():
        match = re.match(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$", line)
        if match and match.group(1) in found:
            found[match.group(1)] = match.group(2)
    return found


def _read(path):
    try:
        with open(path) as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def _ensure_mode(rec, path, mode):
    if mode is None:
        return
    current = stat.S_IMODE(os.stat(path).st_mode)
    if current != mode:
        rec.record_diff(path + " (mode)", "%04o" % current, "%04o" % mode)
        rec.act("set the mode of %s to %04o" % (path, mode), os.chmod, path, mode)


def _targets(items, kind):
    """(field, path, mode, item) of each item, its path and mode checked."""
    for index, item in enumerate(items):
        field = "%s[%d]" % (kind, index)
        path = item["path"]
        if not path or not os.path.isabs(path) or "/../" in path + "/" or "\n" in path:
            raise FabricError("%r must be an absolute path without '..'" % path, field=field + ".path")
        yield field, path, parse_mode(item.get("mode"), field + ".mode"), item


def _wanted_text(text, values, field):
    for key, value in values.items():
        if not SETTING_KEY.match(str(key)):
            raise FabricError("%r is not a setting name (letters, digits and _)" % key, field=field)
        if "\n" in str(value):
            raise FabricError("the value of %s holds a line break; settings are one line each" % key, field=field)
    return apply_settings(text, {str(k): str(v) for k, v in values.items()})


def converge_settings(rec, items):
    """``[{path, values, mode}]``: set ``key = value`` lines, leaving the rest of each file alone."""
    for field, path, mode, item in _targets(items, "settings"):
        before = _read(path)
        after = _wanted_text(before or "", item["values"], field + ".values")
        if after != before:
            keys = list(item["values"])
            rec.record_diff(path, settings_of(before or "", keys), settings_of(after, keys))
            rec.act("set %s in %s" % (", ".join(keys), path), write_atomic, path, after, mode)
        elif before is not None:
            _ensure_mode(rec, path, mode)


def converge_files(rec, items):
    """``[{path, content, mode, parents}]``: whole files with exactly this content."""
    for field, path, mode, item in _targets(items, "files"):
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            if not item.get("parents", True):
                raise FabricError("the directory %s does not exist; create it or set parents: true" % directory,
                                  field=field + ".path")
            rec.act("create directory %s" % directory, os.makedirs, directory, 0o755)
        before = _read(path)
        if before != item["content"]:
            rec.record_diff(path, before, item["content"])
            rec.act("write %s" % path, write_atomic, path, item["content"], mode)
        else:
            _ensure_mode(rec, path, mode)


def _write_kernel_value(path, value):
    with open(path, "w") as handle:
        handle.write(value)


def converge_kernel(rec, values):
    """``{/sys/... or /proc/sys/...: value}``: runtime kernel tunables (persist them with files)."""
    for path, value in values.items():
        field = "kernel.%s" % path
        if not path.startswith(KERNEL_ROOTS) or "/../" in path:
            raise FabricError("only paths under /sys/ or /proc/sys/ are kernel tunables", field=field)
        current = _read(path)
        if current is None:
            raise FabricError("%s does not exist: this kernel lacks the feature (for KSM: CONFIG_KSM)" % path,
                              field=field)
        if current.strip() != str(value):
            rec.record_diff(path, current.strip(), str(value))
            rec.act("set %s to %s" % (path, value), _write_kernel_value, path, str(value))


def converge_devices(rec, items):
    """``[{path, group, mode, missing_ok}]``: a device node's group and mode (what a udev rule does)."""
    for field, path, mode, item in _targets(items, "devices"):
        try:
            current = os.stat(path)
        except FileNotFoundError:
            if item.get("missing_ok", True):
                continue
            raise FabricError("%s does not exist" % path, field=field + ".path")
        group = item.get("group")
        if group:
            try:
                gid = grp.getgrnam(group).gr_gid
            except KeyError:
                raise FabricError("group %r does not exist on this host" % group, field=field + ".group")
            if current.st_gid != gid:
                rec.record_diff(path + " (group)", _group_name(current.st_gid), group)
                rec.act("set the group of %s to %s" % (path, group), os.chown, path, -1, gid)
        _ensure_mode(rec, path, mode)


def _group_name(gid):
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def run_commands(rec, items):
    """``[{argv, environment, changed_regex}]``, in order, after the configuration is written; none runs in
    check mode. A command is a change when its standard output matches its ``changed_regex``
    (multi-line search); a command that exits non-zero stops the run, named with its output."""
    outcomes = []
    for index, item in enumerate(items):
        field = "commands[%d]" % index
        argv = [str(arg) for arg in item["argv"]]
        outcome = {"argv": argv, "ran": False, "changed": False, "stdout_lines": []}
        outcomes.append(outcome)
        if not argv:
            raise FabricError("is empty; give the program and its arguments", field=field + ".argv")
        if rec.check_mode:
            continue
        env = dict(os.environ, **{key: str(value) for key, value in (item.get("environment") or {}).items()})
        try:
            proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, check=False)
        except OSError as exc:
            raise FabricError("cannot run %s: %s" % (argv[0], exc), field=field + ".argv")
        outcome.update(ran=True, rc=proc.returncode, stdout_lines=proc.stdout.splitlines())
        if proc.returncode:
            raise FabricError("%s exited with %d: %s" % (" ".join(argv), proc.returncode,
                                                         (proc.stderr or proc.stdout).strip()[-2000:] or "no output"),
                              field=field + ".argv", commands=outcomes)
        pattern = item.get("changed_regex")
        if pattern and re.search(pattern, proc.stdout, re.M):
            outcome["changed"] = True
            rec.act("ran %s (it changed something)" % " ".join(argv))
    return outcomes


def converge(rec, settings=None, files=None, kernel=None, devices=None):
    """All four kinds; every change goes through ``rec`` (check mode, diff, actions)."""
    converge_devices(rec, devices or [])
    converge_settings(rec, settings or [])
    converge_files(rec, files or [])
    converge_kernel(rec, kernel or {})
