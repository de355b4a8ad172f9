"""calicoctl pool and ipam against the real IPAM service and etcd: messages and exit codes."""

import pytest

from tests.cli import fails, ok


def test_pool_add_then_show(calicoctl):
    assert ok(calicoctl("pool", "add", "10.20.0.0/16")) == "Added pool 10.20.0.0/16 (block size /26).\n"
    ok(calicoctl("pool", "add", "fd80:24e2:f998:72d6::/64", "--block-size=120"))
    shown = ok(calicoctl("pool", "show"))
    assert "| 10.20.0.0/16 " in shown and "fd80:24e2:f998:72d6::/64" in shown
    v6 = ok(calicoctl("pool", "show", "--ipv6"))
    assert "IPv6 CIDR" in v6 and "fd80:24e2:f998:72d6::/64" in v6
    assert "IPv4 CIDR" not in v6 and "10.20.0.0/16" not in v6
    v4 = ok(calicoctl("pool", "show", "--ipv4"))
    assert "10.20.0.0/16" in v4 and "fd80" not in v4


def test_pool_add_is_idempotent_and_updates_flags(calicoctl):
    ok(calicoctl("pool", "add", "10.20.0.0/16"))
    assert ok(calicoctl("pool", "add", "10.20.0.0/16")) == "Pool 10.20.0.0/16 already exists.\n"
    assert "nat-outgoing" in ok(calicoctl("pool", "add", "10.20.0.0/16", "--nat-outgoing"))
    assert "| nat-outgoing |" in ok(calicoctl("pool", "show"))
    fails(calicoctl("pool", "add", "10.20.0.0/16", "--block-size=28"),
          "Pool 10.20.0.0/16 already exists with block size /26; remove it first to "
          "change the block size.")


@pytest.mark.parametrize("args,message", [
    (["10.20.0.0/33"], "Invalid CIDR specified."),
    (["10.20.0"], "Invalid CIDR specified."),
    (["10.20.0.0/16", "--block-size=x"], "Invalid block size 'x': give a prefix length such as 26."),
    (["10.20.0.0/16", "--block-size=8"], "Invalid block size 8 for an IPv4 pool: it must be between 20 and 32."),
])
def test_pool_add_bad_input_changes_nothing(calicoctl, args, message):
    fails(calicoctl("pool", "add", *args), message)
    assert "10.20" not in ok(calicoctl("pool", "show"))


def test_host_bits_are_normalised_and_said(calicoctl):
    out = ok(calicoctl("pool", "add", "10.0.0.1/8"))
    assert out.splitlines()[0] == "Normalised 10.0.0.1/8 to 10.0.0.0/8 (host bits cleared)."
    assert "| 10.0.0.0/8 " in ok(calicoctl("pool", "show"))


def test_overlapping_pool_rejected(calicoctl):
    ok(calicoctl("pool", "add", "10.20.0.0/16"))
    fails(calicoctl("pool", "add", "10.20.5.0/24"),
          "Pool 10.20.5.0/24 overlaps the existing pool 10.20.0.0/16.")


def test_pool_remove(calicoctl, ipam_client):
    fails(calicoctl("pool", "remove", "10.99.0.0/16"), "10.99.0.0/16 is not a configured pool.")
    ok(calicoctl("pool", "add", "10.20.0.0/24"))
    ipam_client.auto_assign(num_ipv4=2, handle_id="w1", hostname="host-a")
    result = calicoctl("pool", "remove", "10.20.0.0/24")
    assert result.returncode == 1 and "still has 2 allocated address(es)" in result.stderr
    assert "10.20.0.0/24" in ok(calicoctl("pool", "show"))
    assert ok(calicoctl("pool", "remove", "10.20.0.0/24", "--force")) == \
        "Removed pool 10.20.0.0/24 and released 2 allocated address(es).\n"
    assert "10.20.0.0/24" not in ok(calicoctl("pool", "show"))
    assert "no problems found" in ok(calicoctl("ipam", "check"))


def test_ipam_show_check_release(calicoctl, ipam_client):
    ok(calicoctl("pool", "add", "10.20.0.0/24"))
    ips = ipam_client.auto_assign(num_ipv4=3, handle_id="w1", hostname="host-a").ipv4
    usage = ok(calicoctl("ipam", "show"))
    assert "| 10.20.0.0/24 | 256       | 3         | 1      |" in usage
    assert "host-a" in usage
    about = ok(calicoctl("ipam", "show", f"--ip={ips[0]}"))
    assert "allocated to handle w1 for host host-a" in about
    assert ok(calicoctl("ipam", "release", f"--ip={ips[0]}")) == f"Released {ips[0]}.\n"
    fails(calicoctl("ipam", "release", f"--ip={ips[0]}"), f"IP {ips[0]} is not assigned.")
    assert "It is not allocated." in ok(calicoctl("ipam", "show", f"--ip={ips[0]}"))
    fails(calicoctl("ipam", "show", "--ip=10.99.0.1"), "10.99.0.1 is not in any configured pool.")
    fails(calicoctl("ipam", "release", "--ip=10.20.0.300"), "Invalid IP address specified.")
    assert ok(calicoctl("ipam", "check")).endswith("no problems found.\n")


def test_unknown_command_and_bad_arguments(calicoctl):
    result = calicoctl("frobnicate")
    assert result.returncode == 1 and "Unknown command 'frobnicate'." in result.stderr
    result = calicoctl("pool", "explode")
    assert result.returncode == 1 and result.stderr.startswith("Invalid arguments.\nUsage:")


def test_help_names_the_environment_variables(calicoctl):
    out = ok(calicoctl("--help"))
    for var in ("CALICO_IPAM_ADDR", "ETCD_ENDPOINTS", "ETCD_AUTHORITY"):
        assert var in out
    assert "CALICO_IPAM_ADDR" in ok(calicoctl("pool", "--help"))


def test_pool_ipip_modes(calicoctl, store):
    """--ipip alone is always (as before modes); a mode can be changed in place;
    IPv6 pools cannot use it; a record written before modes still reads."""
    ok(calicoctl("pool", "add", "10.20.0.0/16", "--ipip"))
    shown = ok(calicoctl("pool", "show", "--ipv4"))
    assert "| ipip=always " in shown and "| always " in shown and "IP-in-IP" in shown
    assert ok(calicoctl("pool", "add", "10.20.0.0/16", "--ipip=cross-subnet")) == \
        "Updated pool 10.20.0.0/16: options now 'ipip=cross-subnet'.\n"
    assert "| cross-subnet " in ok(calicoctl("pool", "show"))
    assert ok(calicoctl("pool", "add", "10.20.0.0/16", "--ipip=cross-subnet")) == \
        "Pool 10.20.0.0/16 already exists.\n"
    assert ok(calicoctl("pool", "add", "10.20.0.0/16")) == \
        "Updated pool 10.20.0.0/16: options now 'none'.\n"
    assert "| never " in ok(calicoctl("pool", "show"))
    fails(calicoctl("pool", "add", "10.20.0.0/16", "--ipip=sometimes"),
          "Invalid IP-in-IP mode 'sometimes': use always, cross-subnet or never.")
    fails(calicoctl("pool", "add", "fd80::/64", "--ipip"),
          "IP-in-IP is IPv4 only: an IPv6 pool cannot use --ipip.")
    assert "fd80" not in ok(calicoctl("pool", "show"))
    from calicopy.datastore import keys
    from calicopy.datastore.store import Txn
    import ipaddress
    old = {"cidr": "10.30.0.0/16", "block_size": 26, "ipip": True}   # no ipip_mode
    assert store.commit(Txn().create(keys.pool(ipaddress.ip_network("10.30.0.0/16")), old))
    row = next(line for line in ok(calicoctl("pool", "show")).splitlines() if "10.30." in line)
    assert "| always " in row


def test_node_mtu_is_checked_first(calicoctl):
    for bad in ("10", "70000", "big"):
        fails(calicoctl("node", "--ip=172.30.0.2", f"--mtu={bad}"),
              f"Invalid MTU '{bad}': give 68 to 65535.")
