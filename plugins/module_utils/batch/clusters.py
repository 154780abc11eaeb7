# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Several batch clusters in one module run: a cluster is the environment its client commands run with
(``SLURM_CONF`` of a VO's own Slurm cluster, see :mod:`domains`; ``{}`` for the site's). One backend per
distinct environment, so a host's VM slots of every VO are managed in one process."""

from __future__ import annotations

import re

from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")


def check_environment(value, field="environment"):
    """``{NAME: value}`` of strings, as a process environment takes it; None and {} mean the default cluster."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise FabricError("must be a dict of environment variables (for example {SLURM_CONF: /etc/slurm/vo/atlas/slurm.conf}), "
                          "got %r" % (value,), field=field)
    environment = {}
    for name, setting in value.items():
        if not isinstance(name, str) or not ENV_NAME_RE.match(name):
            raise FabricError("%r is not an environment variable name: letters, digits and '_', not starting with a digit"
                              % (name,), field=field)
        if isinstance(setting, bool) or not isinstance(setting, (str, int, float)) or "\0" in str(setting):
            raise FabricError("the value of %s must be a string without NUL characters, got %r" % (name, setting), field=field)
        environment[name] = str(setting)
    return environment


def describe(environment):
    """How a message names the cluster an environment reaches."""
    if not environment:
        return "the default cluster"
    return "the cluster of %s" % " ".join("%s=%s" % item for item in sorted(environment.items()))


class Clusters:
    """The backend for each environment, made once by ``make_backend(environment)`` on first use."""

    def __init__(self, make_backend):
        self._make_backend = make_backend
        self._backends = {}

    def backend(self, environment):
        key = tuple(sorted((environment or {}).items()))
        if key not in self._backends:
            self._backends[key] = self._make_backend(dict(key))
        return self._backends[key]


def in_cluster(exc, node, environment):
    """``exc`` (a FabricError about ``node``) with the node and its cluster named in the message."""
    return FabricError("node %s in %s: %s" % (node, describe(environment), exc.bare_msg), field=exc.field, **exc.details)
