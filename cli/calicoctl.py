"""calicoctl: manage calico-py.

Usage:
  calicoctl pool add <CIDR> [--nat-outgoing] [--ipip[=<MODE>]] [--block-size=<N>]
  calicoctl pool remove <CIDR> [--force]
  calicoctl pool show [--ipv4 | --ipv6] [-o <FORMAT>]
  calicoctl ipam show [--ip=<IP>] [-o <FORMAT>]
  calicoctl ipam check [-o <FORMAT>]
  calicoctl ipam release --ip=<IP> [--force]
  calicoctl check [-o <FORMAT>]
  calicoctl container add <CONTAINER> <IP> [--interface=<IF>]
  calicoctl container remove <CONTAINER> [--force]
  calicoctl container <CONTAINER> ip (add|remove) <IP> [--interface=<IF>]
  calicoctl container show [-o <FORMAT>]
  calicoctl node --ip=<IP> [--ip6=<IP6>] [--as=<AS_NUM>] [--name=<NAME>] [--mtu=<MTU>]
  calicoctl node stop [--force]
  calicoctl node remove --name=<NAME>
  calicoctl node bgp peer (add|remove) <PEER_IP> as <AS_NUM>
  calicoctl node bgp peer show [--ipv4 | --ipv6] [--name=<NAME>] [-o <FORMAT>]
  calicoctl status [--name=<NAME>] [-o <FORMAT>]
  calicoctl shownodes [--detailed] [-o <FORMAT>]
  calicoctl bgppeer rr (add|remove) <IP>
  calicoctl bgppeer rr show [--ipv4 | --ipv6] [-o <FORMAT>]
  calicoctl bgp default-node-as [-o <FORMAT>]
  calicoctl bgp default-node-as <AS_NUM>
  calicoctl bgp node-mesh [-o <FORMAT>]
  calicoctl bgp node-mesh (on|off)
  calicoctl bgp peer (add|remove) <PEER_IP> as <AS_NUM>
  calicoctl bgp peer show [--ipv4 | --ipv6] [-o <FORMAT>]
  calicoctl profile show [--detailed] [-o <FORMAT>]
  calicoctl profile (add|remove) <PROFILE> [--force]
  calicoctl profile <PROFILE> tag show [-o <FORMAT>]
  calicoctl profile <PROFILE> tag (add|remove) <TAG>
  calicoctl profile <PROFILE> rule show [--stats] [-o <FORMAT>]
  calicoctl profile <PROFILE> rule (json|update)
  calicoctl profile <PROFILE> member add <CONTAINER>
  calicoctl endpoint <ENDPOINT_ID> profile show [-o <FORMAT>]
  calicoctl endpoint <ENDPOINT_ID> profile (set|append|remove) [<PROFILES>...]
  calicoctl policy explain <SRC> <DST> [--protocol=<P>] [--port=<N>] [-o <FORMAT>]
  calicoctl certs ca [--dir=<DIR>] [--days=<N>]
  calicoctl certs issue <IDENTITY> [--dir=<DIR>] [--host=<HOST>...] [--days=<N>]
  calicoctl certs show <CERT> [-o <FORMAT>]
  calicoctl etcd-auth enable
  calicoctl policy endpoint-to-host [-o <FORMAT>]
  calicoctl policy endpoint-to-host <ACTION>
  calicoctl policy drops [--follow] [--node=<N>] [--endpoint=<ID>] [-o <FORMAT>]
  calicoctl diags [--output=<DIR>]
  calicoctl reset [--yes]
  calicoctl restart-docker-with-alternative-unix-socket [options]
  calicoctl restart-docker-without-alternative-unix-socket [options]
  calicoctl <command> --help
  calicoctl --help

Each command group explains itself: calicoctl <command> --help.
Commands that show state take -o json for a stable machine-readable shape
(docs/cli-json.md); tables are the default.

Where the services are (environment variables):
{env}
"""

from __future__ import annotations

import sys

from docopt import DocoptExit, docopt

from calicopy import config, request_id
from cli import (bgp, bgppeer, certs, check, container, diags, docker_socket, endpoint,
                 etcd_auth, ipam, node, output, policy, pool, profile, reset, shownodes,
                 status)
from cli.client import RpcFailure
from cli.errors import CliError

COMMANDS = {"pool": pool, "ipam": ipam, "check": check, "container": container, "node": node,
            "status": status, "shownodes": shownodes, "bgppeer": bgppeer, "bgp": bgp,
            "diags": diags, "reset": reset, "certs": certs, "etcd-auth": etcd_auth,
            "profile": profile,
            "endpoint": endpoint, "policy": policy,
            "restart-docker-with-alternative-unix-socket": docker_socket,
            "restart-docker-without-alternative-unix-socket": docker_socket}


def usage() -> str:
    return __doc__.format(env=config.describe())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    module = COMMANDS.get(argv[0])
    if module is None:
        print(f"Unknown command '{argv[0]}'.\n\n{usage()}", file=sys.stderr)
        return 1
    argv = getattr(module, "normalise_argv", lambda a: a)(argv)
    doc = module.__doc__ + f"\nEnvironment:\n{config.describe()}\n"
    if "-h" in argv or "--help" in argv:
        print(doc)
        return 0
    try:
        args = docopt(doc, argv, default_help=False)
    except DocoptExit:
        usage_lines = doc[doc.index("Usage:"):].split("\n\n")[0]
        print(f"Invalid arguments.\n{usage_lines}", file=sys.stderr)
        return 1
    try:
        output.format_of(args)          # a bad -o fails before anything is done
        with request_id.request():     # what the services log this command's calls under
            module.run(args)
    except CliError as exc:
        print(exc, file=sys.stderr)
        return exc.exit_code
    except RpcFailure as exc:
        print(exc, file=sys.stderr)
        return 1
    except config.ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the last resort: one line, never a traceback
        print(f"Unexpected error executing command: {exc!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
