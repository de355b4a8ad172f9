"""The ``calico-ipam`` CNI plugin: addresses from calico-py's IPAM service,
for another plugin (e.g. Debian's ``ptp``) to configure.

Each attachment's addresses belong to the IPAM handle
``<node>/cni-ipam/<network>/<container id>/<ifname>``, so a retried ADD gets
the same addresses back, DEL releases exactly them (and succeeds when there
are none), and GC can tell the network's attachments on this node apart. An
ADD's claim carries the request id ``cni-add`` (the handle names the
attachment already), so that two ADDs of one attachment at once, or an IPAM
call retried on another replica, never claim twice.

Each address is reported with the prefix length of its pool and the
gateway 169.254.1.1 (IPv6: fe80::ecee:eeff:feee:eeee): the pool is reached
through the host, as for Calico's own workloads. ``ptp`` then puts the
gateway on its host-side veth and routes the pool through it. Routes given
as ``routes`` in the ipam section are returned as they are.

GC lists the handles through the IPAM API, which has no call to list
handles: it reads the usage per block and asks who owns each allocated
address (one call per address, in blocks that have allocations). GC is rare;
a ``ListHandles(prefix)`` call in the IPAM API would make it one call.
"""

from __future__ import annotations

import ipaddress

from cni import config, skel, spec
from cni.spec import CniError

HANDLE_ORCHESTRATOR = "cni-ipam"
ADD_REQUEST = "cni-add"     # an ADD's request id, within the attachment's handle


def handle_prefix(node: str, network: str) -> str:
    return f"{node}/{HANDLE_ORCHESTRATOR}/{network}/"


def handle_id(node: str, network: str, container_id: str, ifname: str) -> str:
    return f"{handle_prefix(node, network)}{container_id}/{ifname}"


class CalicoIpamPlugin:

    def add(self, env: spec.Env, conf: dict, version: str) -> dict:
        cfg = config.calico_ipam(conf, env)
        from calico.ipam.v1 import ipam_pb2
        from cni.rpc import Clients, RpcFailure
        from calicopy.model.endpoint import IPV4_GATEWAY, IPV6_GATEWAY
        node = cfg.services.nodename
        handle = handle_id(node, cfg.name, env.container_id, env.ifname)
        with Clients(cfg.services) as clients:
            try:
                ips = [a.ip for a in clients.call("ipam", "ListHandleAllocations",
                                                  ipam_pb2.ListHandleAllocationsRequest(
                                                      handle_id=handle)).allocations]
                if not ips:         # else: a retry; these are the first ADD's
                    ips = self._assign(clients, cfg, env, handle)
                pools = [ipaddress.ip_network(p.cidr) for p in
                         clients.call("ipam", "ListPools", ipam_pb2.ListPoolsRequest()).pools]
            except RpcFailure as failure:
                raise failure.to_cni() from None
        out = []
        for text in sorted(ips, key=lambda t: (":" in t, t)):
            ip = ipaddress.ip_address(text)
            pool = next((p for p in pools if ip in p), None)
            prefix = pool.prefixlen if pool else ip.max_prefixlen
            out.append({"address": f"{ip}/{prefix}",
                        "gateway": IPV4_GATEWAY if ip.version == 4 else IPV6_GATEWAY})
        result = {"ips": out, "routes": cfg.routes}
        if conf.get("dns"):
            result["dns"] = conf["dns"]
        return result

    @staticmethod
    def _assign(clients, cfg: config.IpamConfig, env: spec.Env, handle: str) -> list[str]:
        """All or nothing: on a failure, what this call claimed is released."""
        from calico.ipam.v1 import ipam_pb2
        from cni.rpc import RpcFailure
        node, a = cfg.services.nodename, cfg.assign
        attrs = {"node": node, "orchestrator": "cni", "network": cfg.name,
                 "containerid": env.container_id, "ifname": env.ifname}
        if not a.ips:
            resp = clients.call("ipam", "AutoAssign", ipam_pb2.AutoAssignRequest(
                num_ipv4=int(a.ipv4), num_ipv6=int(a.ipv6), handle_id=handle, hostname=node,
                attributes=attrs, ipv4_pools=a.ipv4_pools, ipv6_pools=a.ipv6_pools,
                request_id=ADD_REQUEST))
            return list(resp.ipv4) + list(resp.ipv6)
        try:
            for ip in a.ips:
                clients.call("ipam", "AssignIP", ipam_pb2.AssignIPRequest(
                    ip=ip, handle_id=handle, hostname=node, attributes=attrs))
        except RpcFailure:
            try:
                clients.call("ipam", "ReleaseByHandle",
                             ipam_pb2.ReleaseByHandleRequest(handle_id=handle))
            except RpcFailure:
                pass        # the original failure is the one to report
            raise
        return list(a.ips)

    def delete(self, env: spec.Env, conf: dict, version: str) -> None:
        services = config.calico_ipam_services(conf)
        from calico.ipam.v1 import ipam_pb2
        from cni.rpc import Clients, RpcFailure
        handle = handle_id(services.nodename, conf["name"], env.container_id, env.ifname)
        with Clients(services) as clients:
            try:
                clients.call("ipam", "ReleaseByHandle",
                             ipam_pb2.ReleaseByHandleRequest(handle_id=handle))
            except RpcFailure as failure:
                raise failure.to_cni() from None

    def check(self, env: spec.Env, conf: dict, version: str) -> None:
        cfg = config.calico_ipam(conf, env)
        from calico.ipam.v1 import ipam_pb2
        from cni.rpc import Clients, RpcFailure
        handle = handle_id(cfg.services.nodename, cfg.name, env.container_id, env.ifname)
        with Clients(cfg.services) as clients:
            try:
                have = {a.ip for a in clients.call("ipam", "ListHandleAllocations",
                                                   ipam_pb2.ListHandleAllocationsRequest(
                                                       handle_id=handle)).allocations}
            except RpcFailure as failure:
                raise failure.to_cni() from None
        if not have:
            raise CniError(spec.CHECK_FAILED, f"No address is allocated to container "
                           f"{env.container_id} interface {env.ifname} (handle {handle}).")
        said = {ip["address"].split("/")[0]
                for ip in spec.canonical(conf.get("prevResult") or {})["ips"]}
        missing = sorted(said - have)
        if missing:
            raise CniError(spec.CHECK_FAILED, f"{', '.join(missing)} of the result are not "
                           f"allocated to container {env.container_id} interface {env.ifname}.",
                           f"handle {handle} holds {', '.join(sorted(have))}")

    def gc(self, env: spec.Env, conf: dict, version: str) -> None:
        services = config.calico_ipam_services(conf)
        valid = spec.valid_attachments(conf)
        from calico.ipam.v1 import ipam_pb2
        from cni.rpc import Clients, RpcFailure
        prefix = handle_prefix(services.nodename, conf["name"])
        with Clients(services) as clients:
            try:
                stale = set()
                usage = clients.call("ipam", "GetUsage", ipam_pb2.GetUsageRequest())
                for block in usage.blocks:
                    seen = 0
                    for ip in ipaddress.ip_network(block.cidr):
                        if seen >= block.allocated:
                            break
                        found = clients.call("ipam", "GetAllocation",
                                             ipam_pb2.GetAllocationRequest(ip=str(ip)))
                        if not found.allocated:
                            continue
                        seen += 1
                        if found.handle_id.startswith(prefix):
                            container_id, _, ifname = \
                                found.handle_id[len(prefix):].rpartition("/")
                            if (container_id, ifname) not in valid:
                                stale.add(found.handle_id)
                for handle in sorted(stale):
                    clients.call("ipam", "ReleaseByHandle",
                                 ipam_pb2.ReleaseByHandleRequest(handle_id=handle))
            except RpcFailure as failure:
                raise failure.to_cni() from None

    def status(self, env: spec.Env, conf: dict, version: str) -> None:
        cfg = config.calico_ipam(conf, env)
        from cni.calico import require_pools
        from cni.rpc import Clients
        with Clients(cfg.services) as clients:
            require_pools(clients, cfg.assign)


def main() -> None:
    skel.main(CalicoIpamPlugin())


if __name__ == "__main__":
    main()
