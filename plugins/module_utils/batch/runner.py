# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""How a backend runs a command: a runner is any callable ``runner(argv) -> (rc, stdout, stderr)``.

:class:`AnsibleRunner` adapts ``AnsibleModule.run_command`` (the modules use it); :class:`SubprocessRunner`
runs plain subprocesses (scripts, tests). Both run the command without a shell, in the C locale, and can
look the commands up in a given directory first (sites that install Torque under /opt or /usr/local)."""

from __future__ import annotations

import os
import subprocess


def _resolve(argv, bin_dir):
    if bin_dir and os.sep not in argv[0]:
        candidate = os.path.join(bin_dir, argv[0])
        if os.path.exists(candidate):
            return [candidate] + list(argv[1:])
    return list(argv)


class AnsibleRunner:
    """Runs commands with ``module.run_command`` (never raises on a non-zero exit: the backend decides);
    ``env`` adds to (or overrides) the environment (another cluster's ``SLURM_CONF``)."""

    def __init__(self, module, bin_dir=None, env=None):
        self.module = module
        self.bin_dir = bin_dir
        self.env = env

    def __call__(self, argv):
        argv = _resolve(argv, self.bin_dir)
        if os.sep not in argv[0]:
            path = self.module.get_bin_path(argv[0], required=False, opt_dirs=[self.bin_dir] if self.bin_dir else [])
            if not path:
                return 127, "", "%s: command not found" % argv[0]
            argv = [path] + argv[1:]
        rc, out, err = self.module.run_command(argv, check_rc=False, environ_update=dict(self.env or {}, LC_ALL="C", LANG="C"))
        return rc, out, err


class SubprocessRunner:
    """Runs commands with :mod:`subprocess`; ``env`` adds to (or overrides) the environment."""

    def __init__(self, bin_dir=None, env=None):
        self.bin_dir = bin_dir
        self.env = env

    def __call__(self, argv):
        env = dict(os.environ, LC_ALL="C", LANG="C", **(self.env or {}))
        try:
            proc = subprocess.run(_resolve(argv, self.bin_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  universal_newlines=True, env=env, check=False)
        except OSError as exc:
            return 127, "", "%s: %s" % (argv[0], exc)
        return proc.returncode, proc.stdout, proc.stderr
