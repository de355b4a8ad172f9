"""Make the certificates a cluster runs on: a CA and one certificate per identity.

Usage:
  calicoctl certs ca [--dir=<DIR>] [--days=<N>]
  calicoctl certs issue <IDENTITY> [--dir=<DIR>] [--host=<HOST>...] [--days=<N>]
  calicoctl certs show <CERT> [-o <FORMAT>]

Options:
  --dir=<DIR>     Where the CA and the certificates are kept; else CALICO_PKI_DIR,
                  else /etc/calico-py/pki.
  --host=<HOST>   A name or address the holder serves on (repeat for several);
                  localhost and the loopback addresses are always included.
  --days=<N>      How long the certificate is valid [default: 365]; the CA's: 3650.
  -o <FORMAT>     Output format of `certs show`: table (the default) or json (its
                  shape is in docs/cli-json.md).

`certs ca` creates the CA (ca.pem, ca-key.pem) unless one is there. `certs
issue` signs a certificate for an identity: admin (the operator's calicoctl),
node:<name> (a host's processes), scheduler:<name> (an orchestrator),
service:<name> (the IPAM, policy and BGP services, etcd); it writes
<identity>.pem and <identity>-key.pem, with ':' as '-' (node-host1.pem). The
identity is the certificate's common name: what the services authorise on, and
etcd's user name. Keys are written 0600 in a 0700 folder; issuing again for an
identity replaces its certificate, and every process re-reads changed files,
so rotation needs no restart. `certs show` prints a certificate's identity,
hosts and validity.

Give a process its files with CALICO_TLS_CA_FILE, CALICO_TLS_CERT_FILE and
CALICO_TLS_KEY_FILE (etcd takes the same unless ETCD_CA_CERT_FILE,
ETCD_CERT_FILE, ETCD_KEY_FILE say otherwise). Without them calicoctl uses the
CA and the admin certificate of the certificate folder, and `calicoctl node`
gives its processes node-<name>.pem from there (or --node-cert, --node-key).
"""

from __future__ import annotations

from pathlib import Path

from calicopy import config, pki
from calicopy.errors import CalicoError
from cli import output
from cli.errors import CliError


def _days(text: str | None, default: int) -> int:
    if text is None:
        return default
    if not text.isdigit() or int(text) < 1:
        raise CliError(f"Invalid --days '{text}': give a whole number of days, at least 1.")
    return int(text)


def run(args: dict) -> None:
    folder = Path(config.PKI_DIR.resolve(args["--dir"]))
    try:
        if args["ca"]:
            cert_path, _ = pki.paths(folder, pki.CA_NAME)
            if cert_path.exists():
                print(f"A CA exists already in {folder}; it was left as it is.")
                return
            pki.save(folder, pki.CA_NAME, *pki.make_ca(_days(args["--days"], pki.CA_DAYS)))
            print(f"Created the CA {cert_path} (key {pki.paths(folder, pki.CA_NAME)[1]}).")
        elif args["issue"]:
            identity = pki.check_identity(args["<IDENTITY>"])
            days = _days(args["--days"], pki.DEFAULT_DAYS)
            ca_cert, ca_key = pki.load_ca(folder)
            cert, key = pki.issue(ca_cert, ca_key, identity, args["--host"], days)
            cert_path, key_path = pki.save(folder, identity, cert, key)
            print(f"Issued {identity}: {cert_path} (key {key_path}), valid {days} day(s).")
        else:
            try:
                data = Path(args["<CERT>"]).read_bytes()
            except OSError as exc:
                raise CliError(f"Cannot read {args['<CERT>']}: {exc.strerror}.") from None
            try:
                info = pki.describe(data)
            except ValueError:
                raise CliError(f"{args['<CERT>']} is not a PEM certificate.") from None
            output.emit(args, "Certificate", {"path": args["<CERT>"], **info}, _render)
    except CalicoError as exc:
        raise CliError(str(exc)) from None


def _render(info: dict) -> str:
    return "\n".join([f"Identity:  {info['identity']}", f"Issuer:    {info['issuer']}",
                      f"Valid:     {info['not_before']} to {info['not_after']}",
                      f"Hosts:     {', '.join(info['hosts']) or '-'}"])
