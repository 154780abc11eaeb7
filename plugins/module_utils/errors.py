# -*- coding: utf-8 -*-
# Copyright: (c) 2026, skygrid.fabric contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one exception type the logic raises; modules turn it into fail_json."""

from __future__ import annotations


class FabricError(Exception):
    """A problem the user can fix: names the field at fault and what to do about it."""

    def __init__(self, msg, field=None, **details):
        self.field = field
        self.details = details
        self.bare_msg = msg
        super().__init__("%s: %s" % (field, msg) if field else msg)

    def within(self, prefix):
        """The same error about an item of a list option, for example ``networks[0]``."""
        return FabricError(self.bare_msg, field="%s.%s" % (prefix, self.field) if self.field else prefix,
                           **self.details)
