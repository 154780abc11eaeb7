"""vos_items: the site's VOs as vo_image's ``vos`` items (one staging call for every VO)."""

from __future__ import annotations

from ansible_collections.skygrid.fabric.plugins.module_utils.images.args import vos_items

ENDORSERS = [{"dn": "/CN=endorser", "ca": "/CN=ca", "ca_sha256": "00" * 32}]


def test_items_in_name_order_with_the_list_only_for_class_2():
    site_vos = {
        "lhcb": {"image_list_url": "https://lhcb/list", "endorsers": ENDORSERS, "images": [{"image": "w"}],
                 "vm": {"vcpus": 1}, "share": 50},
        "ops": {"trust_class": 1, "image_list_url": "ignored", "images": [{"image": "site", "image_url": "file:///x"}]},
        "atlas": {"trust_class": "2", "image_list_url": "https://atlas/list", "endorsers": ENDORSERS,
                  "images": [{"image": "w"}], "prune": False, "allow_http": True},
    }
    items = vos_items(site_vos, prune=True)
    assert [item["vo"] for item in items] == ["atlas", "lhcb", "ops"]
    assert items[0] == {"vo": "atlas", "trust_class": 2, "images": [{"image": "w"}], "prune": False, "allow_http": True,
                        "list_url": "https://atlas/list", "endorsers": ENDORSERS}
    assert items[1]["prune"] is True and items[1]["allow_http"] is False  # the site's defaults
    assert "list_url" not in items[2] and "endorsers" not in items[2] and items[2]["trust_class"] == 1


def test_a_vo_with_nothing_to_stage_or_prune_is_left_out():
    site_vos = {"cms": {"images": []}, "alice": {"images": [], "prune": True}, "belle": None}
    assert [item["vo"] for item in vos_items(site_vos)] == ["alice"]
    assert [item["vo"] for item in vos_items(site_vos, prune=True)] == ["alice", "belle", "cms"]
    assert vos_items({}) == [] and vos_items(None) == []
