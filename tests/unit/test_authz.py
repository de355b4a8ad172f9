"""The authorisation table (calicopy.authz): one allowed and one refused call per row."""

import pytest

from calico.bgp.v1 import bgp_pb2
from calico.endpoint.v1 import endpoint_pb2
from calico.ipam.v1 import ipam_pb2
from calico.policy.v1 import policy_pb2
from calicopy.authz import TABLE, Authorizer

IPAM = "/calico.ipam.v1.IpamService/"
POLICY = "/calico.policy.v1.PolicyService/"
BGP = "/calico.bgp.v1.BgpService/"
EP = "/calico.endpoint.v1.EndpointService/"

# (identity, method, request, allowed)
CASES = [
    # admin: everything
    ("admin", IPAM + "CreatePool", ipam_pb2.CreatePoolRequest(pool=ipam_pb2.Pool(cidr="10.0.0.0/8")), True),
    ("admin", BGP + "AddPeer", bgp_pb2.AddPeerRequest(peer=bgp_pb2.Peer(ip="10.0.0.1")), True),
    # node: IPAM for itself and its own handles only
    ("node:a", IPAM + "AutoAssign", ipam_pb2.AutoAssignRequest(hostname="a", handle_id="a/cni/x"), True),
    ("node:a", IPAM + "AutoAssign", ipam_pb2.AutoAssignRequest(hostname="b", handle_id="b/cni/x"), False),
    ("node:a", IPAM + "AutoAssign", ipam_pb2.AutoAssignRequest(hostname="a", handle_id="b/cni/x"), False),
    ("node:a", IPAM + "AssignIP", ipam_pb2.AssignIPRequest(hostname="a", handle_id="a/x", ip="10.0.0.1"), True),
    ("node:a", IPAM + "AssignIP", ipam_pb2.AssignIPRequest(hostname="b", handle_id="a/x", ip="10.0.0.1"), False),
    ("node:a", IPAM + "ReleaseIPs", ipam_pb2.ReleaseIPsRequest(ips=["10.0.0.1"], handle_id="a/x"), True),
    ("node:a", IPAM + "ReleaseIPs", ipam_pb2.ReleaseIPsRequest(ips=["10.0.0.1"]), False),
    ("node:a", IPAM + "ReleaseByHandle", ipam_pb2.ReleaseByHandleRequest(handle_id="a/x"), True),
    ("node:a", IPAM + "ReleaseByHandle", ipam_pb2.ReleaseByHandleRequest(handle_id="b/x"), False),
    ("node:a", IPAM + "ListHandleAllocations", ipam_pb2.ListHandleAllocationsRequest(handle_id="a/x"), True),
    ("node:a", IPAM + "ListHandleAllocations", ipam_pb2.ListHandleAllocationsRequest(handle_id="b/x"), False),
    ("node:a", IPAM + "ListPools", ipam_pb2.ListPoolsRequest(), True),
    ("node:a", IPAM + "CreatePool", ipam_pb2.CreatePoolRequest(pool=ipam_pb2.Pool(cidr="10.0.0.0/8")), False),
    ("node:a", IPAM + "DeletePool", ipam_pb2.DeletePoolRequest(cidr="10.0.0.0/8"), False),
    # node: policy reads and default profiles, never rules
    ("node:a", POLICY + "CreateProfile", policy_pb2.CreateProfileRequest(name="web"), True),
    ("node:a", POLICY + "GetProfile", policy_pb2.GetProfileRequest(name="web"), True),
    ("node:a", POLICY + "UpdateRules", policy_pb2.UpdateRulesRequest(name="web"), False),
    ("node:a", POLICY + "UpdateTags", policy_pb2.UpdateTagsRequest(name="web", add="x"), False),
    ("node:a", POLICY + "DeleteProfile", policy_pb2.DeleteProfileRequest(name="web"), False),
    ("node:a", POLICY + "SetEndpointProfiles", policy_pb2.SetEndpointProfilesRequest(endpoint_id="e"), False),
    # node: its own node record; no peers or settings
    ("node:a", BGP + "RegisterNode", bgp_pb2.RegisterNodeRequest(node=bgp_pb2.Node(name="a")), True),
    ("node:a", BGP + "RegisterNode", bgp_pb2.RegisterNodeRequest(node=bgp_pb2.Node(name="b")), False),
    ("node:a", BGP + "ListNodes", bgp_pb2.ListNodesRequest(), True),
    ("node:a", BGP + "GetNodeStatus", bgp_pb2.GetNodeStatusRequest(node="a"), True),
    ("node:a", BGP + "AddPeer", bgp_pb2.AddPeerRequest(peer=bgp_pb2.Peer(ip="10.0.0.1")), False),
    ("node:a", BGP + "SetBgpConfig", bgp_pb2.SetBgpConfigRequest(node_mesh=False), False),
    ("node:a", BGP + "DeleteNode", bgp_pb2.DeleteNodeRequest(name="a"), False),
    # scheduler: workloads, IPAM for workloads, reading policy
    ("scheduler:k", IPAM + "AutoAssign", ipam_pb2.AutoAssignRequest(hostname="b", handle_id="x"), True),
    ("scheduler:k", IPAM + "ReleaseByHandle", ipam_pb2.ReleaseByHandleRequest(handle_id="x"), True),
    ("scheduler:k", IPAM + "CreatePool", ipam_pb2.CreatePoolRequest(pool=ipam_pb2.Pool(cidr="10.0.0.0/8")), False),
    ("scheduler:k", POLICY + "CreateProfile", policy_pb2.CreateProfileRequest(name="web"), True),
    ("scheduler:k", POLICY + "SetEndpointProfiles", policy_pb2.SetEndpointProfilesRequest(endpoint_id="e"), True),
    ("scheduler:k", POLICY + "UpdateRules", policy_pb2.UpdateRulesRequest(name="web"), False),
    ("scheduler:k", BGP + "AddPeer", bgp_pb2.AddPeerRequest(peer=bgp_pb2.Peer(ip="10.0.0.1")), False),
    ("scheduler:k", BGP + "RegisterNode", bgp_pb2.RegisterNodeRequest(node=bgp_pb2.Node(name="k")), False),
    ("scheduler:k", EP + "AddEndpoint", endpoint_pb2.AddEndpointRequest(workload_id="w"), True),
    # retiring a host (calicoctl node remove) is the administrator's alone
    ("admin", IPAM + "ReleaseHost", ipam_pb2.ReleaseHostRequest(hostname="a"), True),
    ("node:a", IPAM + "ReleaseHost", ipam_pb2.ReleaseHostRequest(hostname="a"), False),
    ("scheduler:k", IPAM + "ReleaseHost", ipam_pb2.ReleaseHostRequest(hostname="a"), False),
    # a forced release names no handle: a node's is refused like any release without one
    ("node:a", IPAM + "ReleaseIPs",
     ipam_pb2.ReleaseIPsRequest(ips=["10.0.0.1"], force=True), False),
    # anything else
    ("mallory", IPAM + "ListPools", ipam_pb2.ListPoolsRequest(), False),
    ("service:ipam", IPAM + "ListPools", ipam_pb2.ListPoolsRequest(), False),
    ("node:", IPAM + "ListPools", ipam_pb2.ListPoolsRequest(), False),
    ("node:a", "/calico.ipam.v1.IpamService/SomethingNew", ipam_pb2.ListPoolsRequest(), False),
    ("node:a", IPAM + "UpdatePool", ipam_pb2.UpdatePoolRequest(cidr="10.0.0.0/8"), False),
    ("node:a", BGP + "RemovePeer", bgp_pb2.RemovePeerRequest(ip="10.0.0.1"), False),
    # open to everyone authenticated
    ("node:a", "/grpc.health.v1.Health/Check", None, True),
]
# Reads: a node and a scheduler may, an identity calico-py does not know may not.
READS = [(IPAM, "GetAllocation", ipam_pb2.GetAllocationRequest(ip="10.0.0.1")),
         (IPAM, "GetUsage", ipam_pb2.GetUsageRequest()),
         (IPAM, "CheckConsistency", ipam_pb2.CheckConsistencyRequest()),
         (POLICY, "ListProfiles", policy_pb2.ListProfilesRequest()),
         (POLICY, "GetEndpointProfiles", policy_pb2.GetEndpointProfilesRequest(endpoint_id="e")),
         (POLICY, "Explain", policy_pb2.ExplainRequest(src="10.0.0.1", dst="10.0.0.2")),
         (POLICY, "GetPolicySettings", None),
         (BGP, "GetNode", bgp_pb2.GetNodeRequest(name="a")),
         (BGP, "GetBgpConfig", bgp_pb2.GetBgpConfigRequest()),
         (BGP, "ListPeers", bgp_pb2.ListPeersRequest())]
for service, name, message in READS:
    CASES += [("node:a", service + name, message, True),
              ("scheduler:k", service + name, message, True),
              ("service:bgp", service + name, message, False)]


@pytest.mark.parametrize("identity, method, request_, allowed", CASES)
def test_table(identity, method, request_, allowed):
    why = Authorizer().check(identity, method, request_)
    assert (why is None) == allowed, why
    if not allowed:
        assert why.startswith(f"{identity} lacks permission for {method.rsplit('/', 1)[1]}")
        assert why.endswith(".") and "\n" not in why


def test_endpoint_service_serves_its_own_node_and_schedulers():
    authz = Authorizer(node="a")
    request = endpoint_pb2.ListEndpointsRequest()
    assert authz.check("node:a", EP + "ListEndpoints", request) is None
    assert authz.check("scheduler:k", EP + "ListEndpoints", request) is None
    why = authz.check("node:b", EP + "ListEndpoints", request)
    assert why == ("node:b lacks permission for ListEndpoints: a node may call only its own "
                   "endpoint service (this is a's).")


def test_every_row_of_the_table_is_covered_here():
    covered = {method for _, method, _, _ in CASES}
    ep_rows = {m for m in TABLE if m.startswith(EP)}
    missing = set(TABLE) - covered - ep_rows
    assert not missing, f"rows without a case: {sorted(missing)}"


def test_a_denial_is_logged_once(caplog):
    authz = Authorizer()
    request = ipam_pb2.CreatePoolRequest(pool=ipam_pb2.Pool(cidr="10.0.0.0/8"))
    with caplog.at_level("WARNING", logger="calico-authz"):
        for _ in range(3):
            authz.check("node:a", IPAM + "CreatePool", request)
    lines = [r.getMessage() for r in caplog.records if r.name == "calico-authz"]
    assert len(lines) == 1
    assert "node:a" in lines[0] and "CreatePool" in lines[0] and "10.0.0.0/8" in lines[0]


def test_retiring_a_host_is_refused_with_its_reason():
    why = Authorizer().check("node:a", IPAM + "ReleaseHost",
                             ipam_pb2.ReleaseHostRequest(hostname="a"))
    assert why == ("node:a lacks permission for ReleaseHost (hostname a): retiring a host "
                   "is the administrator's.")
