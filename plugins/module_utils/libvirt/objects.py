# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The life of a persistent libvirt object with a declarative spec (networks, storage pools):
present / active / inactive / absent, autostart, update in place, restart only where needed.

A kind plugs in by subclassing :class:`ObjectKind` (look-up, XML, what a change needs); the
:class:`ObjectManager` does the rest, recording every change with the Reconciler.
"""

from __future__ import annotations

from ansible_collections.skygrid.fabric.plugins.module_utils.errors import FabricError
from ansible_collections.skygrid.fabric.plugins.module_utils.libvirt.connection import libvirt_errors

OBJECT_STATES = ("present", "active", "inactive", "absent")


class ObjectKind:
    """What differs between networks and pools. ``noun`` names the kind in messages."""

    noun = "object"

    def __init__(self, conn):
        self.conn = conn

    def lookup(self, name):
        raise NotImplementedError

    def define(self, xml):
        raise NotImplementedError

    def to_xml(self, spec, uuid=None):
        raise NotImplementedError

    def from_xml(self, xml):
        raise NotImplementedError

    def xml_of(self, obj, inactive):
        raise NotImplementedError

    def start(self, obj):
        obj.create()

    def stop(self, obj):
        obj.destroy()

    def check_removable(self, obj, params):
        """Raise FabricError when removing would lose something the user did not consent to."""

    def remove(self, obj, params):
        obj.undefine()

    def adopt_defaults(self, wanted, current):
        """Take into ``wanted`` what libvirt chose where the spec left a value open (in place)."""

    def live_keys(self, wanted, current):
        """The changed keys ``live_update`` can apply to the running object without a restart."""
        return []

    def live_update(self, obj, wanted, current, reconciler):
        """Apply the ``live_keys`` changes to the running object and its saved definition."""

    def restart_blockers(self, obj):
        """Why a restart would hurt (for example the VMs attached); empty when it would not."""
        return []


class ObjectManager:
    def __init__(self, kind, reconciler):
        self.kind = kind
        self.reconciler = reconciler

    def ensure(self, name, state, wanted, autostart=None, allow_restart=False, params=None):
        kind, rec = self.kind, self.reconciler
        obj = kind.lookup(name)
        current = kind.from_xml(kind.xml_of(obj, inactive=True)) if obj is not None else None
        result = {"name": name, "state": state, "restarted": False}
        if state == "absent":
            if obj is not None:
                kind.check_removable(obj, params or {})
                with libvirt_errors("removing %s %s" % (kind.noun, name), "state"):
                    if obj.isActive():
                        rec.act("stop %s %s" % (kind.noun, name), kind.stop, obj)
                    rec.act("remove %s %s" % (kind.noun, name), kind.remove, obj, params or {})
            rec.record_diff(name, current, None)
            return result
        if current is None:
            obj = rec.act("define %s %s" % (kind.noun, name), self._define, kind.to_xml(wanted))
        else:
            self._update(obj, name, wanted, current, allow_restart, result, state)
        rec.record_diff(name, current, wanted)
        self._converge_run_state(obj, name, state, result)
        if autostart is not None:
            have = bool(obj.autostart()) if obj is not None else False
            if have != autostart:
                rec.act("%s autostart of %s %s" % ("enable" if autostart else "disable", kind.noun, name),
                        lambda: obj.setAutostart(int(autostart)))
        return result

    def _update(self, obj, name, wanted, current, allow_restart, result, state):
        kind, rec = self.kind, self.reconciler
        as_asked = dict(wanted)
        kind.adopt_defaults(wanted, current)
        changed = [key for key in wanted if wanted[key] != current.get(key)]
        live_keys = kind.live_keys(wanted, current) if changed else []
        # What the running object lacks that only a restart brings: checked before anything changes,
        # and also when an earlier run saved the definition but could not restart.
        restart_keys = []
        if obj.isActive() and state != "inactive":
            live = kind.from_xml(kind.xml_of(obj, inactive=False))
            kind.adopt_defaults(as_asked, live)
            restart_keys = [key for key in as_asked if as_asked[key] != live.get(key) and key not in live_keys]
            blockers = kind.restart_blockers(obj) if restart_keys else []
            if blockers and not allow_restart:
                raise FabricError("changing %s of %s %s needs a restart, which would cut off %s; stop them "
                                  "first, or set allow_restart: true to restart anyway"
                                  % (", ".join(restart_keys), kind.noun, name, ", ".join(blockers)),
                                  field="allow_restart")
        if live_keys:
            kind.live_update(obj, wanted, current, rec)
        rest = [key for key in changed if key not in live_keys]
        if rest:
            rec.act("update definition of %s %s (%s)" % (kind.noun, name, ", ".join(rest)),
                    self._define, kind.to_xml(wanted, uuid=obj.UUIDString()))
        if restart_keys:
            with libvirt_errors("restarting %s %s" % (kind.noun, name)):
                rec.act("restart %s %s to apply %s" % (kind.noun, name, ", ".join(restart_keys)),
                        self._stop_start, obj)
            result["restarted"] = True

    def _define(self, xml):
        with libvirt_errors("defining the %s" % self.kind.noun):
            return self.kind.define(xml)

    def _stop_start(self, obj):
        self.kind.stop(obj)
        self.kind.start(obj)

    def _converge_run_state(self, obj, name, state, result):
        kind, rec = self.kind, self.reconciler
        active = obj is not None and bool(obj.isActive())
        with libvirt_errors("changing the state of %s %s" % (kind.noun, name), "state"):
            if state == "active" and not active:
                rec.act("start %s %s" % (kind.noun, name), lambda: kind.start(obj))
            elif state == "inactive" and active:
                blockers = kind.restart_blockers(obj)
                if blockers:
                    raise FabricError("stopping %s %s would cut off %s; stop them first"
                                      % (kind.noun, name, ", ".join(blockers)), field="state")
                rec.act("stop %s %s" % (kind.noun, name), kind.stop, obj)
        result["active"] = (state == "active") or (state == "present" and active)
