"""The ``calico`` CNI plugin: a workload's interface from this node's endpoint service.

ADD asks the endpoint service for an endpoint of the workload
(orchestrator "cni", workload id = CNI_CONTAINERID, interface CNI_IFNAME,
in CNI_NETNS, the configured MTU); the service creates the veth, claims the
addresses, routes them and returns once the node's policy is programmed. The
workload's profiles are created first if missing (members reach members). The
endpoint is labelled with the network name, so GC finds the network's own.

ADD, DEL and CHECK import neither grpc nor protobuf (a runtime starts a
process per command, and those imports took most of its time): they call the
endpoint service through its JSON socket (``cni.rpc.EndpointClient``), and
ask the policy service (over gRPC) about a profile only when this node has
not seen it confirmed in the last few minutes (``cni.profiles``).

Idempotent: the endpoint id is derived from (node, orchestrator, workload,
interface), so a retried ADD finds the endpoint the first one made and
answers the same result (the same addresses and MAC). An endpoint of the
same container and interface whose namespace is gone is stale (its DEL never
came) and is replaced.

DEL removes the endpoint (interface, routes, addresses); one that does not
exist is already deleted. CHECK compares the endpoint, the result and the
namespace. GC removes the network's endpoints on this node that the runtime
no longer lists. STATUS says whether an ADD could succeed now.

What ``cni/bin/calico`` runs is ``cni.thin``, which forwards ADD, DEL, CHECK
and GC to the node, where this same class runs them (a subclass of it:
services/endpoint/cni_server.py); this module's ``main`` runs a command in
the plugin's own process, for what the node hands back (a profile to create,
STATUS) or when the node cannot be reached.
"""

from __future__ import annotations

from cni import config, netcheck, skel, spec
from cni.spec import CniError

ORCHESTRATOR = "cni"
LABEL_NETWORK, LABEL_CONTAINER, LABEL_IFNAME = "cni.network", "cni.containerid", "cni.ifname"


def _result(ep, env: spec.Env, cfg: config.CalicoConfig) -> dict:
    interfaces = [{"name": ep.host_interface},
                  {"name": env.ifname, "mac": ep.mac, "sandbox": env.netns}]
    ips = [{"address": net, "gateway": ep.ipv4_gateway, "interface": 1} for net in ep.ipv4_nets]
    ips += [{"address": net, "gateway": ep.ipv6_gateway, "interface": 1} for net in ep.ipv6_nets]
    routes = ([{"dst": "0.0.0.0/0", "gw": ep.ipv4_gateway}] if ep.ipv4_nets else []) + \
        ([{"dst": "::/0", "gw": ep.ipv6_gateway}] if ep.ipv6_nets else [])
    ours = {"interfaces": interfaces, "ips": ips, "routes": routes}
    if cfg.dns:
        ours["dns"] = cfg.dns
    return ours


class CalicoPlugin:
    """The plugin's commands. The hooks ``_endpoints``, ``_create_profiles``
    and ``_verify`` are what differs when the node runs them."""

    @staticmethod
    def _endpoints(services: config.Services):
        """The endpoint service's client (cni.rpc.EndpointClient's calls)."""
        from cni.rpc import EndpointClient
        return EndpointClient(services)

    # ADD ------------------------------------------------------------------------------------

    def add(self, env: spec.Env, conf: dict, version: str) -> dict:
        cfg = config.calico(conf, env)
        netcheck.check_namespace(env.netns)
        from cni.rpc import RpcFailure
        endpoints = self._endpoints(cfg.services)
        self._ensure_profiles(cfg)
        try:
            ep = self._add_endpoint(endpoints, env, cfg)
        except RpcFailure as failure:
            if failure.status != "ALREADY_EXISTS":
                raise failure.to_cni() from None
            ep = self._existing(endpoints, env, failure)
            if ep is None:      # stale, removed: this add is the first
                try:
                    ep = self._add_endpoint(endpoints, env, cfg)
                except RpcFailure as again:
                    raise again.to_cni() from None
        return spec.merge(conf.get("prevResult"), _result(ep, env, cfg))

    def _ensure_profiles(self, cfg: config.CalicoConfig) -> None:
        """Create the profiles that do not exist. The policy service is asked
        (over gRPC) only about profiles this node has not seen confirmed in
        the last few minutes (``profiles.Confirmed``), so an ADD of a network
        seen before imports no grpc."""
        from cni.profiles import Confirmed
        confirmed = Confirmed(cfg.services)
        unknown = [name for name in cfg.profiles if not confirmed.recent(name)]
        if unknown:
            self._create_profiles(cfg, unknown, confirmed)

    @staticmethod
    def _create_profiles(cfg: config.CalicoConfig, unknown: list[str], confirmed) -> None:
        """Ask the policy service to create ``unknown`` (ALREADY_EXISTS is fine)."""
        from calico.policy.v1 import policy_pb2
        from cni.rpc import Clients, RpcFailure
        with Clients(cfg.services) as clients:
            for name in unknown:
                try:
                    clients.call("policy", "CreateProfile",
                                 policy_pb2.CreateProfileRequest(name=name))
                except RpcFailure as failure:
                    if failure.status == "INVALID_ARGUMENT":
                        raise CniError(spec.INVALID_CONFIG, f"Invalid profile '{name}': "
                                       f"{failure.details}", "profiles") from None
                    if failure.status != "ALREADY_EXISTS":
                        raise failure.to_cni() from None
                confirmed.remember(name)

    @staticmethod
    def _add_endpoint(endpoints, env: spec.Env, cfg: config.CalicoConfig):
        a = cfg.assign
        explicit = bool(a.ips)
        return endpoints.add_endpoint(
            orchestrator=ORCHESTRATOR, workload_id=env.container_id, netns_path=env.netns,
            interface_name=env.ifname, ips=a.ips,
            auto_ipv4=int(a.ipv4 and not explicit), auto_ipv6=int(a.ipv6 and not explicit),
            ipv4_pools=a.ipv4_pools, ipv6_pools=a.ipv6_pools, profile_ids=cfg.profiles,
            labels={LABEL_NETWORK: cfg.name, LABEL_CONTAINER: env.container_id,
                    LABEL_IFNAME: env.ifname}, mtu=cfg.mtu)

    @staticmethod
    def _find(endpoints, container_id: str, ifname: str):
        found = endpoints.list_endpoints(orchestrator=ORCHESTRATOR, workload_id=container_id)
        return next((ep for ep in found if ep.interface_name == ifname), None)

    def _existing(self, endpoints, env: spec.Env, failure):
        """After ALREADY_EXISTS: the endpoint an earlier ADD of this container
        and interface made (a retry gets it back), or None once a stale one
        (its namespace gone) was removed; else the failure stands."""
        from cni.rpc import RpcFailure
        try:
            ep = self._find(endpoints, env.container_id, env.ifname)
            if ep is None:          # the address or the interface name is someone else's
                raise failure.to_cni()
            if ep.state != "active":
                raise CniError(spec.TRY_AGAIN_LATER, f"An ADD of container {env.container_id} "
                               f"interface {env.ifname} is in progress.")
            if netcheck.same_namespace(ep.netns, env.netns):
                return ep
            from calicopy import netns
            if netns.alive(ep.netns):
                raise CniError(spec.IN_USE, f"Container {env.container_id} already has interface "
                               f"{env.ifname}, in the network namespace {ep.netns}.")
            endpoints.remove_endpoint(orchestrator=ORCHESTRATOR, workload_id=env.container_id,
                                      interface_name=env.ifname)
            return None
        except RpcFailure as other:
            raise other.to_cni() from None

    # DEL ------------------------------------------------------------------------------------

    def delete(self, env: spec.Env, conf: dict, version: str) -> None:
        services = config.calico_services(conf, env)
        from cni.rpc import RpcFailure
        endpoints = self._endpoints(services)
        try:
            endpoints.remove_endpoint(
                orchestrator=ORCHESTRATOR, workload_id=env.container_id,
                interface_name=env.ifname)
        except RpcFailure as failure:
            if failure.status != "NOT_FOUND":       # not there: deleted already
                raise failure.to_cni() from None

    # CHECK ----------------------------------------------------------------------------------

    def check(self, env: spec.Env, conf: dict, version: str) -> None:
        cfg = config.calico(conf, env)
        netcheck.check_namespace(env.netns)
        from cni.rpc import RpcFailure
        endpoints = self._endpoints(cfg.services)
        try:
            ep = self._find(endpoints, env.container_id, env.ifname)
        except RpcFailure as failure:
            raise failure.to_cni() from None
        who = f"container {env.container_id} interface {env.ifname}"
        if ep is None:
            raise CniError(spec.UNKNOWN_CONTAINER, f"calico-py has no endpoint for {who} on node "
                           f"{cfg.services.nodename}.")
        problems = []
        if ep.state != "active":
            problems.append(f"the endpoint is {ep.state}")
        if not netcheck.same_namespace(ep.netns, env.netns):
            problems.append(f"the endpoint is in {ep.netns}, not {env.netns}")
        nets = list(ep.ipv4_nets) + list(ep.ipv6_nets)
        prev = conf.get("prevResult")
        if prev:
            prev = spec.canonical(prev)
            index = next((i for i, itf in enumerate(prev["interfaces"])
                          if itf.get("name") == env.ifname and itf.get("sandbox")), None)
            said = sorted(ip["address"] for ip in prev["ips"] if ip.get("interface") == index)
            if index is None:
                problems.append(f"the result has no interface {env.ifname}")
            elif said != sorted(nets):
                problems.append(f"the result says {', '.join(said) or 'no address'}, the "
                                f"endpoint has {', '.join(nets) or 'none'}")
        if not problems:
            problems = self._verify(env.netns, env.ifname, ep.mac, nets, ep.ipv4_gateway,
                                    ep.ipv6_gateway)
        if problems:
            raise CniError(spec.CHECK_FAILED, f"CHECK of {who} failed: {'; '.join(problems)}.",
                           f"endpoint {ep.endpoint_id} in {env.netns}")

    @staticmethod
    def _verify(path: str, ifname: str, mac: str, nets: list[str], gw4: str, gw6: str
                ) -> list[str]:
        """What differs in the namespace from the endpoint (netcheck.verify)."""
        return netcheck.verify(path, ifname, mac, nets, gw4, gw6)

    # GC -------------------------------------------------------------------------------------

    def gc(self, env: spec.Env, conf: dict, version: str) -> None:
        services = config.calico_services(conf, env)
        valid = spec.valid_attachments(conf)
        from cni.rpc import RpcFailure
        endpoints = self._endpoints(services)
        try:
            for ep in endpoints.list_endpoints():
                ours = ep.orchestrator == ORCHESTRATOR and \
                    ep.labels.get(LABEL_NETWORK) == conf["name"]
                if not ours or (ep.workload_id, ep.interface_name) in valid:
                    continue
                try:
                    endpoints.remove_endpoint(orchestrator=ORCHESTRATOR,
                                              workload_id=ep.workload_id,
                                              interface_name=ep.interface_name)
                except RpcFailure as failure:
                    if failure.status != "NOT_FOUND":
                        raise
        except RpcFailure as failure:
            raise failure.to_cni() from None

    # STATUS ---------------------------------------------------------------------------------

    def status(self, env: spec.Env, conf: dict, version: str) -> None:
        cfg = config.calico(conf, env)
        from cni.rpc import Clients, RpcFailure
        try:
            info = self._endpoints(cfg.services).get_node_info()
        except RpcFailure as failure:
            raise failure.to_cni(spec.NOT_AVAILABLE) from None
        if info["node"] != cfg.services.nodename:
            raise CniError(spec.NOT_AVAILABLE, f"The endpoint service at "
                           f"{cfg.services.endpoint_addr} serves node {info['node']}, not "
                           f"{cfg.services.nodename}.")
        if cfg.assign.ipv6 and not info["ipv6"]:
            raise CniError(spec.NOT_AVAILABLE, f"Node {info['node']} is not configured for "
                           "IPv6, and the network assigns IPv6 addresses.")
        from calico.policy.v1 import policy_pb2
        with Clients(cfg.services) as clients:
            require_pools(clients, cfg.assign)
            try:
                clients.call("policy", "GetProfile",
                             policy_pb2.GetProfileRequest(name=cfg.profiles[0] if cfg.profiles
                                                          else "_"))
            except RpcFailure as failure:
                if failure.status != "NOT_FOUND":
                    raise failure.to_cni(spec.NOT_AVAILABLE) from None


def require_pools(clients, assign: config.Assign) -> None:
    """STATUS: the IPAM service answers and has an enabled pool for each
    family the network assigns (among its configured pools, if any)."""
    from calico.ipam.v1 import ipam_pb2
    from cni.rpc import RpcFailure
    try:
        pools = clients.call("ipam", "ListPools", ipam_pb2.ListPoolsRequest()).pools
    except RpcFailure as failure:
        raise failure.to_cni(spec.NOT_AVAILABLE) from None
    for version, wanted, only in ((4, assign.ipv4, assign.ipv4_pools),
                                  (6, assign.ipv6, assign.ipv6_pools)):
        usable = [p.cidr for p in pools if not p.disabled and (":" in p.cidr) == (version == 6)
                  and (not only or p.cidr in only)]
        if wanted and not assign.ips and not usable:
            which = f" among {', '.join(only)}" if only else ""
            raise CniError(spec.NOT_AVAILABLE, f"There is no enabled IPv{version} pool{which}; "
                           "add one with 'calicoctl pool add'.")


def main() -> None:
    skel.main(CalicoPlugin())


if __name__ == "__main__":
    main()
