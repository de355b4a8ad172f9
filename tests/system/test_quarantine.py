"""A malformed record stops nothing (real node, etcd and kernel): an endpoint
record holding only {"state": "active"} under the node's own prefix, and an
ACTIVE endpoint of another host with "ipv4_nets": ["bogus/32"]. Before, the
first crash-looped the node's endpoint service after a restart (`calicoctl
node` failed after 30 s) and failed `shownodes` everywhere; the second made
every policy agent fail every pass, so every add timed out."""

from calicopy.datastore import keys
from calicopy.datastore.store import Txn
from calicopy.model.endpoint import ACTIVE, Endpoint, endpoint_id
from tests.cli import ok
from tests.system.helpers import wait_for

ONLY_STATE = keys.endpoint("a", "netns", "broken", "f" * 32)


def bogus_endpoint(store) -> str:
    ep_id = endpoint_id("b", "netns", "elsewhere", "eth0")
    ep = Endpoint(ep_id, "b", "netns", "elsewhere", "eth0", "/var/run/netns/elsewhere",
                  ACTIVE, "02:00:00:00:00:09", profile_ids=["net"])
    key = keys.endpoint("b", "netns", "elsewhere", ep_id)
    assert store.commit(Txn().create(key, {**ep.to_json(), "ipv4_nets": ["bogus/32"]}))
    return key


def test_malformed_records_are_skipped_and_reported(lab, pools, store):
    a = lab.add_host("a", node=True)
    assert store.commit(Txn().create(ONLY_STATE, {"state": "active"}))
    bogus = bogus_endpoint(store)

    shown = ok(a.calicoctl("shownodes"))                 # "Unexpected error in ListNodes"
    assert "a" in shown.split()
    a.stop_node()
    a.start_calico_node()                                # the endpoint service crash-looped
    w1 = a.add_workload("w1", profiles=("net",))         # adds timed out on the agent
    w2 = a.add_workload("w2", profiles=("net",))
    w1.assert_can_ping(w2.ip)

    def reported():
        return a.calicoctl("status").stdout
    wait_for("status to list what the node's processes skip",
             lambda: ONLY_STATE in reported() and bogus in reported())
    status = reported()
    assert "Malformed records skipped (treated as absent; see `calicoctl check`)" in status
    assert "field 'endpoint_id' is missing" in status
    assert "field 'ipv4_nets' holds 'bogus/32', not an IPv4 network" in status
    def reporters(key):
        return {line.split()[1] for line in status.splitlines() if key in line}
    assert reporters(bogus) == {"policy"}
    assert reporters(ONLY_STATE) == {"endpoint", "policy"}

    check = a.calicoctl("check")
    assert check.returncode == 1
    assert f"  {ONLY_STATE}: field 'endpoint_id' is missing\n" in check.stdout
    assert f"  {bogus}: field 'ipv4_nets' holds 'bogus/32', not an IPv4 network\n" in \
        check.stdout
    assert "2 malformed record(s), each treated as absent:" in check.stdout
    assert check.stderr == "Fix or delete the malformed records above.\n"

    # Deleted, they leave the reports at each process's next read of them (the
    # agent's next pass; the endpoint service's next listing); check is clean.
    for key in (ONLY_STATE, bogus):
        assert store.commit(Txn().delete(store.get(key)))
    ok(a.calicoctl("container", "show"))
    wait_for("the reports to clear", lambda: "Malformed" not in reported())
    assert "no malformed records." in ok(a.calicoctl("check"))
