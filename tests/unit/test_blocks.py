import ipaddress

from calicopy.model.ipam import Block

NET = ipaddress.ip_network("10.0.0.0/30")


def test_allocate_hands_out_each_address_once_then_nothing():
    block = Block.empty(NET, "a")
    assert block.allocate(3, "h1", "a", {}) == ["10.0.0.0", "10.0.0.1", "10.0.0.2"]
    assert block.allocate(3, "h2", "a", {}) == ["10.0.0.3"]
    assert block.allocate(1, "h3", "a", {}) == []
    assert (block.used, block.free) == (4, 0)


def test_released_addresses_are_reused_last():
    block = Block.empty(NET, "a")
    block.allocate(2, "h1", "a", {})
    assert block.release(["10.0.0.0"]) == ["10.0.0.0"]
    assert block.allocate(3, "h2", "a", {}) == ["10.0.0.2", "10.0.0.3", "10.0.0.0"]


def test_release_with_handle_only_frees_that_owner():
    block = Block.empty(NET, "a")
    block.allocate(1, "old", "a", {})
    assert block.release(["10.0.0.0"], handle_id="someone-else") == []
    assert block.owner("10.0.0.0").handle_id == "old"
    assert block.release(["10.0.0.0", "10.0.0.1"], handle_id="old") == ["10.0.0.0"]


def test_assign_specific_address_and_refuse_a_taken_one():
    block = Block.empty(NET, "a")
    assert block.assign("10.0.0.2", "h1", "a", {"k": "v"})
    assert not block.assign("10.0.0.2", "h2", "a", {})
    assert "10.0.0.2" not in block.allocate(4, "h3", "a", {})


def test_json_round_trip_keeps_everything():
    block = Block.empty(ipaddress.ip_network("fd00::/126"), "host-1")
    block.allocate(2, "h1", "host-1", {"ns": "x"})
    block.release(["fd00::"])
    again = Block.from_json(block.to_json())
    assert again == block
    assert again.ips_of("h1") == ["fd00::1"]
