"""The configuration keys of our plugins, validated; errors name key and value.

``calico`` (top level of its plugin configuration)::

    nodename        this node's name          default: CALICO_NODENAME, NODENAME, hostname
    endpoint_addr   the node's endpoint service  default: CALICO_ENDPOINT_ADDR, else
                                                 unix:<state_dir>/<nodename>/endpoint.sock;
                    a unix socket: the plugin calls the JSON socket next to it
                    (calicopy.config.endpoint_json_socket: endpoint.json.sock)
    state_dir       the node's state folder   default: CALICO_STATE_DIR, /var/run/calico-py
    ipam_addr       the IPAM service          default: CALICO_IPAM_ADDR, 127.0.0.1:50051
                    (its replicas: their addresses, comma-separated)
    policy_addr     the policy service        default: CALICO_POLICY_ADDR, 127.0.0.1:50052
                    (likewise)
    timeout         seconds per service call  default: CALICO_RPC_TIMEOUT, 10
    tls_ca_file, tls_cert_file, tls_key_file
                    the CA, certificate and key presented to the IPAM and policy
                    services (the node's: node:<nodename>), all three or none
                                              default: CALICO_TLS_*_FILE, else the
                                              admin certificate of CALICO_PKI_DIR
    profiles        profiles of the workloads default: [the network name, '-' and '.'
                                              as '_']; created when missing
    mtu             MTU of both ends of the veth, 68-65535 default: 0, the kernel's (1500)
    ipam            optional; if given, type "calico-ipam", and these keys:
      assign_ipv4   true/false (or "true"/"false")            default true
      assign_ipv6                                             default false
      ipv4_pools    CIDRs of pools to take IPv4 from          default: any pool
      ipv6_pools    CIDRs of pools to take IPv6 from          default: any pool

``calico-ipam`` reads the ``ipam`` section: the four keys above, ``routes``
(returned as they are), and ``nodename``, ``ipam_addr``, ``timeout`` and the
``tls_*`` keys (in the section, else at the plugin's top level, else the
defaults above).

Both take specific addresses from ``runtimeConfig.ips`` (capability "ips")
or ``CNI_ARGS`` ``IP=a,b``; these replace auto-assignment.

Defaults come from ``calicopy.config`` (declared there once); it is imported
only when a key is left out.
"""

from __future__ import annotations

import json
import os

from cni.spec import INVALID_CONFIG, INVALID_ENVIRONMENT, CniError, Env

# What the endpoint service accepts (services/endpoint/endpoints.py), checked
# here too so that a bad value is refused naming the key, before any call.
MIN_MTU, MAX_MTU = 68, 65535


class Services:
    """Where the services are, for one invocation. ``ipam_addr`` and
    ``policy_addr``: a service's address, or its replicas' comma-separated.
    ``endpoint_json``: the endpoint service's JSON socket (a path), None if
    ``endpoint_addr`` is not a unix socket."""

    def __init__(self, nodename: str, endpoint_addr: str, ipam_addr: str, policy_addr: str,
                 timeout: float, endpoint_json: str | None = None,
                 tls: tuple[str, str, str] | None = None, environ=None):
        self.nodename, self.endpoint_addr = nodename, endpoint_addr
        self.ipam_addr, self.policy_addr, self.timeout = ipam_addr, policy_addr, timeout
        self.endpoint_json = endpoint_json
        self.tls = tls      # (CA, certificate, key) files from the configuration, or None
        self.environ = environ      # the plugin process's environment; None: this one's

    def security(self):
        """How gRPC calls are made: these files, else the environment's."""
        from calicopy.tls import Security   # grpc: only for the calls that use it
        if self.tls is None:
            return Security.from_env(self.environ)
        return Security.from_env(self.environ, ca=self.tls[0], cert=self.tls[1],
                                 key=self.tls[2])


class Assign:
    """Which addresses to ask for."""

    def __init__(self, ipv4: bool, ipv6: bool, ipv4_pools: list[str], ipv6_pools: list[str],
                 ips: list[str]):
        self.ipv4, self.ipv6 = ipv4, ipv6
        self.ipv4_pools, self.ipv6_pools, self.ips = ipv4_pools, ipv6_pools, ips


class CalicoConfig:
    def __init__(self, name: str, services: Services, assign: Assign, profiles: list[str],
                 dns: dict, mtu: int = 0):
        self.name, self.services, self.assign = name, services, assign
        self.profiles, self.dns, self.mtu = profiles, dns, mtu


class IpamConfig:
    def __init__(self, name: str, services: Services, assign: Assign, routes: list[dict]):
        self.name, self.services, self.assign, self.routes = name, services, assign, routes


def _bad(key: str, value, why: str) -> CniError:
    return CniError(INVALID_CONFIG, f"Invalid {key} {json.dumps(value)}: {why}")


def _bool(section: dict, key: str, default: bool) -> bool:
    value = section.get(key, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise _bad(key, value, "use true or false.")


def _pools(section: dict, key: str, version: int) -> list[str]:
    value = section.get(key, [])
    if not isinstance(value, list):
        raise _bad(key, value, "give a list of pool CIDRs.")
    import ipaddress
    out = []
    for item in value:
        try:
            net = ipaddress.ip_network(item, strict=False) if isinstance(item, str) else None
        except ValueError:
            net = None
        if net is None or net.version != version:
            raise _bad(key, item, f"not an IPv{version} CIDR.")
        out.append(str(net))
    return out


def _ips(conf: dict, env: Env) -> list[str]:
    """Specific addresses: runtimeConfig.ips (["10.0.0.5/32", ...]) or CNI_ARGS IP=."""
    wanted = (conf.get("runtimeConfig") or {}).get("ips")
    source = "runtimeConfig.ips"
    if wanted is None and env.args.get("IP"):
        wanted, source = env.args["IP"].split(","), "CNI_ARGS IP"
    if wanted is None:
        return []
    if not isinstance(wanted, list):
        raise _bad(source, wanted, "give a list of addresses.")
    import ipaddress
    out = []
    for item in wanted:
        try:
            out.append(str(ipaddress.ip_interface(item.strip()).ip))
        except (ValueError, AttributeError):
            code = INVALID_ENVIRONMENT if source == "CNI_ARGS IP" else INVALID_CONFIG
            raise CniError(code, f"Invalid address {json.dumps(item)} in {source}.") from None
    return out


def _assign(section: dict, conf: dict, env: Env) -> Assign:
    assign = Assign(_bool(section, "assign_ipv4", True), _bool(section, "assign_ipv6", False),
                    _pools(section, "ipv4_pools", 4), _pools(section, "ipv6_pools", 6),
                    _ips(conf, env))
    if not (assign.ipv4 or assign.ipv6 or assign.ips):
        raise CniError(INVALID_CONFIG, "assign_ipv4 and assign_ipv6 are both false: the "
                       "workload would get no address.")
    return assign


def _text(sections: list[dict], key: str) -> str | None:
    for section in sections:
        if key in section:
            value = section[key]
            if not isinstance(value, str) or not value.strip():
                raise _bad(key, value, "give a non-empty string.")
            return value.strip()
    return None


def _parsed(key: str, value: str, parse):
    try:
        return parse(value)
    except ValueError as exc:
        raise _bad(key, value, f"{exc}.") from None


def _services(sections: list[dict], env: Env | None = None) -> Services:
    """Explicit keys first, then calicopy.config's environment variables and
    defaults: of the plugin's process (``env.environ``, ``env.hostname``), else
    this one's."""
    from calicopy import config as cc    # only now: its imports cost milliseconds
    from calicopy.node_paths import NodePaths
    environ = env.environ if env is not None else None
    hostname = env.hostname if env is not None else None
    try:
        node = _text(sections, "nodename")
        if node is not None:
            node = _parsed("nodename", node, cc.parse_name)
        elif hostname is not None:      # the default is the plugin process's host name
            import dataclasses
            node = dataclasses.replace(cc.NODENAME, default=hostname).resolve(environ=environ)
        else:
            node = cc.NODENAME.resolve(environ=environ)
        endpoint = _text(sections, "endpoint_addr")
        state_dir = _text(sections, "state_dir")
        if endpoint is not None:
            endpoint = _parsed("endpoint_addr", endpoint, cc.parse_address)
        elif state_dir is not None:
            folder = _parsed("state_dir", state_dir, cc.parse_path)
            endpoint = NodePaths(folder, node).endpoint_addr
        else:
            endpoint = cc.endpoint_addr(node=node, environ=environ)
        addrs = {}
        for key, param in (("ipam_addr", cc.IPAM_ADDR), ("policy_addr", cc.POLICY_ADDR)):
            value = _text(sections, key)
            found = _parsed(key, value, cc.parse_replicas) if value is not None \
                else param.resolve(environ=environ)
            addrs[key] = ",".join(found)        # one address, or its replicas'
        timeout = next((s["timeout"] for s in sections if "timeout" in s), None)
        if timeout is None:
            timeout = cc.RPC_TIMEOUT.resolve(environ=environ)
        elif isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise _bad("timeout", timeout, "give a positive number of seconds.")
        tls = _tls_files(sections)
    except cc.ConfigError as exc:           # from an environment variable
        raise CniError(INVALID_ENVIRONMENT, str(exc)) from None
    return Services(node, endpoint, addrs["ipam_addr"], addrs["policy_addr"], float(timeout),
                    cc.endpoint_json_socket(endpoint), tls, environ)


TLS_KEYS = ("tls_ca_file", "tls_cert_file", "tls_key_file")


def _tls_files(sections: list[dict]) -> tuple[str, str, str] | None:
    values = [_text(sections, key) for key in TLS_KEYS]
    if not any(values):
        return None
    for key, value in zip(TLS_KEYS, values):
        if value is None:
            raise CniError(INVALID_CONFIG, f"Missing {key}: give tls_ca_file, tls_cert_file "
                           "and tls_key_file together.", key)
        if not os.path.isfile(value):
            raise _bad(key, value, "no such file.")
    return values[0], values[1], values[2]


def _with_endpoint(services: Services) -> Services:
    """The ``calico`` plugin's: the endpoint service must be on a unix socket."""
    if services.endpoint_json is None:
        raise CniError(INVALID_CONFIG, f"Invalid endpoint_addr \"{services.endpoint_addr}\": "
                       "give the endpoint service's unix socket (unix:<path>); the plugin "
                       "calls it through the JSON socket next to it.")
    return services


def calico_services(conf: dict, env: Env | None = None) -> Services:
    """Only where the services are: what DEL and GC need, so that they still
    work with a configuration whose other keys an ADD would refuse."""
    return _with_endpoint(_services([conf], env))


def calico_ipam_services(conf: dict, env: Env | None = None) -> Services:
    return _services([conf.get("ipam") or {}, conf], env)


def _profile_name(network: str) -> str:
    return network.replace("-", "_").replace(".", "_")


def calico(conf: dict, env: Env) -> CalicoConfig:
    """The ``calico`` plugin's configuration."""
    ipam = conf.get("ipam") or {}
    if ipam and ipam.get("type") != "calico-ipam":
        raise CniError(INVALID_CONFIG, f"ipam type {json.dumps(ipam.get('type'))} cannot be "
                       "used with the calico plugin: it gets addresses through the node's "
                       "endpoint service; use \"calico-ipam\" or leave ipam out.")
    mtu = conf.get("mtu", 0)
    if isinstance(mtu, bool) or not isinstance(mtu, int) or \
            not (mtu == 0 or MIN_MTU <= mtu <= MAX_MTU):
        raise _bad("mtu", mtu, f"give a number from {MIN_MTU} to {MAX_MTU} (or 0, the "
                   "kernel's default).")
    profiles = conf.get("profiles", [_profile_name(conf["name"])])
    if not isinstance(profiles, list) or not all(isinstance(p, str) and p for p in profiles):
        raise _bad("profiles", profiles, "give a list of profile names.")
    dns = conf.get("dns") or {}
    return CalicoConfig(conf["name"], _with_endpoint(_services([conf], env)),
                        _assign(ipam, conf, env), list(profiles), dns, mtu)


def calico_ipam(conf: dict, env: Env) -> IpamConfig:
    """The ``calico-ipam`` plugin's configuration (its ``ipam`` section)."""
    ipam = conf.get("ipam")
    if not ipam:
        raise CniError(INVALID_CONFIG, "calico-ipam reads its keys from the 'ipam' section, "
                       "which is missing.")
    routes = ipam.get("routes", [])
    if not isinstance(routes, list) or not all(isinstance(r, dict) and "dst" in r
                                               for r in routes):
        raise _bad("routes", routes, "give a list of {\"dst\": CIDR[, \"gw\": IP]}.")
    import ipaddress
    for route in routes:
        try:
            ipaddress.ip_network(route["dst"], strict=False)
            if route.get("gw"):
                ipaddress.ip_address(route["gw"])
        except (ValueError, TypeError):
            raise _bad("routes", route, "not a valid route.") from None
    return IpamConfig(conf["name"], _services([ipam, conf], env), _assign(ipam, conf, env),
                      routes)
