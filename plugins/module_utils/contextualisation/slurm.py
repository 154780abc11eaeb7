# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The cloud-init user-data that makes a VM's slurmd join Slurm (the slurm role's ``vm_context``), built in
one pass instead of a templated task per VM.

Trust domains (docs/SECURITY.md): a VM of a VO in ``site_vos`` (site-built images) joins the site's cluster
with the site's munge key; every other VM joins its VO's own cluster, whose slurm.conf (port, munge socket)
and key are read on the controller. The files come as the read_files module returns them:
``{path: {exists, content (base64)}}``. Munge keys pass through here: no message ever holds file content."""

from __future__ import annotations

import base64
import posixpath
import re
import shlex

from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError

_VM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_VO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_FEATURE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_NODE_CONF = re.compile(r"[A-Za-z0-9=,:. /_-]*")
_PORT = re.compile(r"(?m)^SlurmctldPort=(\d+)")
_AUTH_SOCKET = re.compile(r"(?m)^AuthInfo=\S*socket=(/[^,\s]+)")
# slurmd's own default, when a VO cluster's slurm.conf names no port
_DEFAULT_PORT = "6817"

_NO_DOMAIN_FIX = ("VO-built VMs never get the site's munge key: create the VO's cluster (docs/SECURITY.md, "
                  "\"Running it\"; scripts/slurm-testbed.sh on the test bed), or, for a site-built image "
                  "(trust class 1), list the VO in slurm_site_vos.")


def _check_vm(index, vm):
    field = "slurm_vms[%d]" % index
    if not isinstance(vm, dict) or "name" not in vm or "vo" not in vm:
        raise FabricError("needs a name (a host name) and a vo (the VO whose trust domain the VM joins)",
                          field=field)
    name = vm["name"]
    if not isinstance(name, str) or not _VM_NAME.fullmatch(name):
        raise FabricError("%r is not a host name: letters, digits, '_', '.', '-', at most 63, starting with a "
                          "letter or digit" % (name,), field=field + ".name")
    field = "slurm_vms[%d] (%s)" % (index, name)
    vo = vm["vo"]
    if not isinstance(vo, str) or not _VO_NAME.fullmatch(vo):
        raise FabricError("%r is not a VO name: letters, digits, '_', '.', '-', starting with a letter or digit"
                          % (vo,), field=field + ".vo")
    features = vm.get("features") or []
    if not isinstance(features, list):
        raise FabricError("must be a list of feature names", field=field + ".features")
    for feature in features:
        if not isinstance(feature, str) or not _FEATURE.fullmatch(feature):
            raise FabricError("%r: features are names (letters, digits, '_', '.', '-')" % (feature,),
                              field=field + ".features")
    conf = vm.get("conf") or ""
    if not isinstance(conf, str) or not _NODE_CONF.fullmatch(conf):
        raise FabricError("%r: conf holds only slurmd node parameters (letters, digits and = , : . / _ - "
                          "and spaces)" % (conf,), field=field + ".conf")


def plan_domains(vms, site_vos=(), conf_dir="/etc/slurm/vo", key_dir="/etc/munge/vo",
                 site_key="/etc/munge/munge.key", controller="", server=""):
    """Check the VMs and sort them into trust domains: which files to read on ``controller``.

    Returns ``{controller, server, site_vos, vo_conf: {vo: path}, vo_key: {vo: path}, site_key (path, or
    None when no VM joins the site's cluster), paths: [every file to read]}``. ``server`` is the host the
    VMs reach slurmctld at."""
    if not isinstance(vms, list):
        raise FabricError("must be a list of VMs, each {name, vo, features, conf}", field="slurm_vms")
    for index, vm in enumerate(vms):
        _check_vm(index, vm)
    if not server:
        raise FabricError("the VMs need an address to reach slurmctld at: set slurm_controller_address or "
                          "slurm_controller_host", field="slurm_controller_address")
    site_vos = list(site_vos or [])
    vos = []
    for vm in vms:
        if vm["vo"] not in site_vos and vm["vo"] not in vos:
            vos.append(vm["vo"])
    vo_conf = {vo: "%s/%s/slurm.conf" % (conf_dir, vo) for vo in vos}
    vo_key = {vo: "%s/%s.key" % (key_dir, vo) for vo in vos}
    site_key = site_key if any(vm["vo"] in site_vos for vm in vms) else None
    return {"controller": controller, "server": server, "site_vos": site_vos, "vo_conf": vo_conf,
            "vo_key": vo_key, "site_key": site_key,
            "paths": list(vo_conf.values()) + list(vo_key.values()) + ([site_key] if site_key else [])}


def _file(files, path):
    return files.get(path) or {"exists": False, "content": ""}


def _text(files, path):
    return base64.b64decode(_file(files, path).get("content") or "").decode("utf-8", errors="replace")


def domain_errors(plan, files):
    """What stops a trust domain from being joined, one clear message each; never any file's content."""
    errors = []
    where = plan["controller"]
    for vo, conf_path in plan["vo_conf"].items():
        key_path = plan["vo_key"][vo]
        if not _file(files, conf_path).get("exists"):
            problem = "%s is missing" % conf_path
        elif not _AUTH_SOCKET.search(_text(files, conf_path)):
            problem = "%s names no munge socket (AuthInfo=socket=...)" % conf_path
        elif not _file(files, key_path).get("exists"):
            problem = "its munge key %s is missing" % key_path
        else:
            continue
        errors.append("VO %s has no trust domain on %s: %s. %s" % (vo, where, problem, _NO_DOMAIN_FIX))
    if plan["site_key"] and not _file(files, plan["site_key"]).get("exists"):
        errors.append("%s does not exist on %s: VMs of site-built images (%s) join the site's cluster with its "
                      "munge key. Set slurm_munge_key_path to the site's key."
                      % (plan["site_key"], where, ", ".join(plan["site_vos"])))
    return errors


_DROPIN = """\
# Generated by the skygrid.fabric slurm role: slurmd as dynamic node %(node)s, configless.
[Unit]
# Configless: there is no /etc/slurm/slurm.conf in the VM (reset the packaged unit's conditions).
ConditionPathExists=
# Retried for as long as it takes (see Restart=).
StartLimitIntervalSec=0

[Service]
# Configless slurmd exits at once when its cluster does not answer (its slurmctld restarting or unreachable
# while the VM boots): start it again until it joins.
Restart=on-failure
RestartSec=10
ExecStart=
ExecStart=%(slurmd)s -D -s -Z -N %(node)s --conf-server %(server)s%(conf_option)s

"""

_JOIN_SCRIPT = """\
#!/bin/sh
# Generated by the skygrid.fabric slurm role: this VM's slurmd joins Slurm as dynamic node %(node)s
# (slurmd -Z), fetching its configuration from slurmctld (configless). Run by cloud-init at every boot (per-boot).
set -eu
NODE='%(node)s'
SERVER='%(server)s'
CONF='%(conf)s'
# The munge socket the cluster's slurm.conf names (AuthInfo): this VM's munged, reached through a link.
AUTH_SOCKET='%(auth_socket)s'
SLURMD='%(slurmd)s'
MUNGED='%(munged)s'

# write_files may run before the munge user exists on some images: own the key now.
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key

if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  # The drop-in (slurmd.service.d/skygrid-dynamic.conf) holds the same slurmd command line; the link
  # to the munge socket comes from tmpfiles.d at every boot.
  [ -z "$AUTH_SOCKET" ] || systemd-tmpfiles --create /etc/tmpfiles.d/skygrid-munge-vo.conf
  systemctl daemon-reload
  systemctl enable munge slurmd >/dev/null 2>&1 || true
  systemctl restart munge
  # slurmd fails at once when its cluster does not answer yet: the drop-in makes systemd retry it.
  systemctl restart slurmd || echo "skygrid-slurm-join: slurmd could not join $SERVER yet; systemd retries it every 10 s" >&2
  exit 0
fi

# The parents of the site's SlurmdSpoolDir/SlurmdLogFile: configless slurmd creates only the last level.
mkdir -p %(dirs)s

# No systemd: start munged and slurmd directly (slurmd daemonizes).
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
if [ -n "$AUTH_SOCKET" ]; then
  mkdir -p "$(dirname "$AUTH_SOCKET")"
  ln -sfn /run/munge/munge.socket.2 "$AUTH_SOCKET"
fi
if ! pidof munged >/dev/null 2>&1; then
  if command -v runuser >/dev/null 2>&1; then
    runuser -u munge -- "$MUNGED"
  else
    su -s /bin/sh munge -c "$MUNGED"
  fi
fi
# Run at every boot (cloud-init's per-boot hook): a slurmd that already runs has joined.
if pidof slurmd >/dev/null 2>&1; then
  exit 0
fi
start_slurmd() {
  if [ -n "$CONF" ]; then
    "$SLURMD" -Z -N "$NODE" --conf-server "$SERVER" --conf "$CONF"
  else
    "$SLURMD" -Z -N "$NODE" --conf-server "$SERVER"
  fi
}
# Configless slurmd exits at once, before it daemonizes, when it cannot fetch its configuration (its
# slurmctld restarting or unreachable while this VM boots), and nothing would start it again until the
# next boot: retry in the background until it runs, so the VM joins as soon as its cluster answers.
if ! start_slurmd; then
  echo "skygrid-slurm-join: slurmd could not join $SERVER yet; retrying every 10 s" >&2
  ( while sleep 10; ! start_slurmd; do :; done ) </dev/null >/dev/null 2>&1 &
fi
"""

_PER_BOOT_HOOK = """\
#!/bin/sh
# skygrid.fabric: join Slurm at every boot, the first included (a VM started again rejoins)
exec %s
"""

_MUNGE_TMPFILES = """\
# Generated by the skygrid.fabric slurm role: the VO cluster's slurm.conf names this munge socket
# (AuthInfo); it is the VM's own munged, which holds the VO's key.
d %s 0755 munge munge -
L+ %s - - - - /run/munge/munge.socket.2
"""


def _vm_user_data(vm, plan, files, port, settings):
    site = vm["vo"] in plan["site_vos"]
    if site:
        key_path, auth_socket = plan["site_key"], ""
        # A VO cluster's node is created by the site (name, address, features pinned): only the site's declare.
        conf = " ".join((["Feature=" + ",".join(vm["features"])] if vm.get("features") else [])
                        + ([vm["conf"]] if vm.get("conf") else []))
    else:
        key_path, conf = plan["vo_key"][vm["vo"]], ""
        vo_conf = _text(files, plan["vo_conf"][vm["vo"]])
        found = _PORT.search(vo_conf)
        port = found.group(1) if found else _DEFAULT_PORT
        auth_socket = _AUTH_SOCKET.search(vo_conf).group(1)
    values = {"node": vm["name"], "server": "%s:%s" % (plan["server"], str(port).strip()), "conf": conf,
              "conf_option": ' --conf "%s"' % conf if conf else "", "auth_socket": auth_socket,
              "slurmd": settings["slurmd"], "munged": settings["munged"],
              "dirs": " ".join(shlex.quote(str(path)) for path in settings["dirs"])}
    join_script = settings["join_script"]
    write_files = [
        {"path": "/etc/munge/munge.key", "encoding": "b64", "content": _file(files, key_path)["content"].strip(),
         "owner": "munge:munge", "permissions": "0400"},
        {"path": "/etc/systemd/system/slurmd.service.d/skygrid-dynamic.conf", "permissions": "0644",
         "content": _DROPIN % values},
        {"path": join_script, "permissions": "0755", "content": _JOIN_SCRIPT % values},
        {"path": settings["per_boot_dir"] + "/" + posixpath.basename(join_script), "permissions": "0755",
         "content": _PER_BOOT_HOOK % join_script},
    ]
    if auth_socket:
        write_files.append({"path": "/etc/tmpfiles.d/skygrid-munge-vo.conf", "permissions": "0644",
                            "content": _MUNGE_TMPFILES % (posixpath.dirname(auth_socket), auth_socket)})
    return {"write_files": write_files}


def vm_user_data(vms, plan, files, port=6817, slurmd="/usr/sbin/slurmd", munged="/usr/sbin/munged",
                 join_script="/usr/local/sbin/skygrid-slurm-join", per_boot_dir="/var/lib/cloud/scripts/per-boot",
                 dirs=("/var/spool/slurmd", "/var/log/slurm")):
    """``{VM name: cloud-init user-data dict}`` for the VMs :func:`plan_domains` sorted into ``plan``, from the
    ``files`` read on the controller. ``port`` is the site's slurmctld port (a VO cluster's comes from its
    slurm.conf)."""
    for index, vm in enumerate(vms):
        _check_vm(index, vm)
        if vm["vo"] not in plan["site_vos"] and vm["vo"] not in plan["vo_conf"]:
            raise FabricError("VO %s is not in the plan: sort the same slurm_vms into trust domains first"
                              % vm["vo"], field="slurm_vms[%d] (%s).vo" % (index, vm["name"]))
    errors = domain_errors(plan, files)
    if errors:
        raise FabricError(" ".join(errors), field="slurm_vms")
    settings = {"slurmd": slurmd, "munged": munged, "join_script": join_script, "per_boot_dir": per_boot_dir,
                "dirs": list(dirs)}
    return {vm["name"]: _vm_user_data(vm, plan, files, port, settings) for vm in vms}
