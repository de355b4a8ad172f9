"""The kernel's iptables tables and ipsets as state, behind the tools' command
lines (in the style of Felix's IptablesStub), for unit tests of the policy agent.

``KernelStub.run`` has node.policy.commands.run's contract, so it can be given
wherever the agent takes a runner. It answers what the agent runs, as the
tools would:

- ``ip[6]tables[-B]-save [-c] [-t T]``: the tables in iptables-save format
  (``-c``: every rule's counters, always ``[0:0]``: the stub counts nothing);
- ``ip[6]tables[-B]-restore [--noflush] [--wait] [--counters]``: ``*table``, ``:chain``
  (creates a chain, or flushes one that exists), ``-A``/``-I``/``-D``/``-F``/
  ``-N``/``-X`` and ``COMMIT``; all or nothing, as iptables-nft-restore is;
- ``ip[6]tables[-B] [-w] [-t T] -C|-A|-I|-D|-F|-N|-X ...``: one command;
- ``ipset save``, ``ipset restore [-exist]`` (all or nothing) and single
  ipset commands (create, add, del, flush, swap, destroy).

It refuses what the kernel and the tools refuse: rules in a chain that does
not exist, a ``-j`` target that is neither a target nor a chain of the table
(``-g`` only to a chain), deleting a chain that is not empty or still
referenced, a set that does not exist or is of the other family, an address
of the other family, names that are too long, destroying a set a rule uses.
The other backend's tools are missing (FileNotFoundError, as from subprocess).
With the nft backend, ``generation()`` is nf_tables' ruleset generation: one
more for every iptables write that went through (a restore, a command that
changes a table), as the kernel counts them (node.policy.generation).

Tests read the state (``chains``, ``rules``, ``sets``), never a log of the
commands: the stub keeps none, so tests cannot come to depend on call order.
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import ipaddress
import os
import re
import shlex

from node.policy.commands import CommandError

BUILTIN_CHAINS = {"filter": ("INPUT", "FORWARD", "OUTPUT"),
                  "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
                  "raw": ("PREROUTING", "OUTPUT")}
TARGETS = {"ACCEPT", "DROP", "RETURN", "QUEUE", "MARK", "CONNMARK", "MASQUERADE", "SNAT",
           "DNAT", "REDIRECT", "LOG", "NFLOG", "REJECT", "CT", "NOTRACK", "TCPMSS"}
NAT_TARGETS = {"MASQUERADE", "SNAT", "DNAT", "REDIRECT"}
POLICIES = ("ACCEPT", "DROP")
CHAIN_NAME_MAX = 28           # XT_EXTENSION_MAXNAMELEN less its NUL
SET_NAME_MAX = 31             # IPSET_MAXNAMELEN less its NUL
SET_TYPES = ("hash:ip", "hash:net")
# Options only a loaded match module understands (else "unknown option").
OPTION_MODULES = {"--match-set": "set", "--comment": "comment", "--ctstate": "conntrack",
                  "--mac-source": "mac", "--mark": "mark", "--dports": "multiport",
                  "--sports": "multiport", "--icmp-type": "icmp", "--icmpv6-type": "icmp6"}
MODULE_VERSIONS = {"icmp": 4, "icmp6": 6}
FREE_TEXT = ("--comment", "--log-prefix", "--nflog-prefix")
NO_ARGUMENT = ("--invert",)      # options that take no value (rpfilter's)
PLAIN = re.compile(r"[A-Za-z0-9_-]+\Z")
TOOL = re.compile(r"(ip6?tables)(?:-(nft|legacy))?(?:-(save|restore))?\Z")


class Refused(Exception):
    """What the kernel or a tool refuses; the message is the tool's complaint."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


@dataclasses.dataclass
class Chain:
    policy: str | None          # None: a user chain
    rules: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class IpSet:
    kind: str
    family: str
    maxelem: int
    members: set[str] = dataclasses.field(default_factory=set)


def _tokens(rule: str) -> list[str]:
    return shlex.split(rule)


def _canonical(spec: list[str]) -> str:
    """A rule as iptables-save prints it: free text double-quoted unless plain."""
    words = []
    for i, word in enumerate(spec):
        if i and spec[i - 1] in FREE_TEXT and not PLAIN.match(word):
            word = '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
        words.append(word)
    return " ".join(words)


def _empty_tables() -> dict[str, dict[str, Chain]]:
    return {table: {name: Chain("ACCEPT") for name in chains}
            for table, chains in BUILTIN_CHAINS.items()}


class KernelStub:
    """One host's tables (per IP version) and sets, through one iptables backend."""

    def __init__(self, backend: str = "nft"):
        self.backend = backend
        self._tables = {4: _empty_tables(), 6: _empty_tables()}
        self._sets: dict[str, IpSet] = {}
        self._failures: list[str] = []      # tool-name prefixes of restores to fail
        self._generation = 1

    # commands.run's contract ---------------------------------------------------

    def run(self, argv: list[str], stdin: str = "", check: bool = True, timeout: float = 60,
            raw: bool = False):
        """The command's output; with ``raw``, its exit code instead."""
        argv = list(argv)
        code, out, err = self._dispatch(argv, stdin)
        if raw:
            return code
        if check and code != 0:
            raise CommandError(argv, code, out, err, stdin)
        return out

    def generation(self) -> int | None:
        """nf_tables' ruleset generation (None with the legacy backend, which has none)."""
        return self._generation if self.backend == "nft" else None

    # For tests -----------------------------------------------------------------

    def fail_restores(self, count: int = 1, tool: str = "") -> None:
        """Make the next ``count`` restores (of tools whose name starts with
        ``tool``: "iptables", "ip6tables", "ipset"; any if empty) fail without
        changing anything, as a refused transaction does."""
        self._failures += [tool] * count

    def chains(self, version: int, table: str) -> dict[str, list[str]]:
        """Every chain of a table, built-in ones included, with its rules."""
        return {name: list(chain.rules) for name, chain in self._tables[version][table].items()}

    def rules(self, version: int, table: str, chain: str) -> list[str]:
        """One chain's rules (KeyError if there is no such chain)."""
        return list(self._tables[version][table][chain].rules)

    def sets(self) -> dict[str, set[str]]:
        """Every set with its members."""
        return {name: set(s.members) for name, s in self._sets.items()}

    def set_type(self, name: str) -> tuple[str, str]:
        """A set's type and family, e.g. ("hash:ip", "inet")."""
        return self._sets[name].kind, self._sets[name].family

    def iptables(self, version: int, *args: str) -> str:
        """What an operator types, e.g. ``iptables(4, "-D", "INPUT", "-j", "cali-INPUT")``."""
        stem = "iptables" if version == 4 else "ip6tables"
        return self.run([f"{stem}-{self.backend}", "-w", *args])

    # Dispatch ------------------------------------------------------------------

    def _dispatch(self, argv: list[str], stdin: str) -> tuple[int, str, str]:
        tool = os.path.basename(argv[0])
        if tool == "ipset":
            return self._ipset(argv[1:], stdin)
        match = TOOL.match(tool)
        if not match or (match[2] and match[2] != self.backend):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", argv[0])
        version = 6 if match[1] == "ip6tables" else 4
        try:
            if match[3] == "save":
                return 0, self._save(version, argv[1:]), ""
            if match[3] == "restore":
                return self._restore(tool, version, argv[1:], stdin)
            return self._iptables(version, argv[1:])
        except Refused as exc:
            return exc.code, "", f"{tool}: {exc}\n"

    def _injected_failure(self, tool: str) -> bool:
        for i, prefix in enumerate(self._failures):
            if tool.startswith(prefix):
                del self._failures[i]
                return True
        return False

    # iptables ------------------------------------------------------------------

    def _save(self, version: int, args: list[str]) -> str:
        tables = list(BUILTIN_CHAINS)
        counters = "-c" in args          # the stub counts nothing: [0:0]
        args = [a for a in args if a != "-c"]
        if args[:1] in (["-t"], ["--table"]) and len(args) == 2:
            tables = [args[1]]
        elif args:
            raise Refused(f"unknown arguments {' '.join(args)}", 2)
        lines = ["# Generated by the kernel stub"]
        for table in tables:
            if table not in BUILTIN_CHAINS:
                raise Refused(f"Table '{table}' does not exist")
            chains = self._tables[version][table]
            order = list(BUILTIN_CHAINS[table]) + sorted(
                c for c in chains if c not in BUILTIN_CHAINS[table])
            lines.append(f"*{table}")
            lines += [f":{c} {chains[c].policy or '-'} [0:0]" for c in order]
            lines += [f"{'[0:0] ' if counters else ''}-A {c} {rule}"
                      for c in order for rule in chains[c].rules]
            lines.append("COMMIT")
        return "\n".join(lines) + "\n"

    def _restore(self, tool: str, version: int, args: list[str], stdin: str):
        unknown = [a for a in args
                   if a not in ("--noflush", "-n", "--wait", "-w", "--counters", "-c")]
        if unknown:
            raise Refused(f"unknown arguments {' '.join(unknown)}", 2)
        if self._injected_failure(tool):
            return 1, "", f"{tool}: injected failure (kernel stub)\n"
        tables = copy.deepcopy(self._tables[version])
        table = None
        for n, line in enumerate(stdin.splitlines(), 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            try:
                if text.startswith("*"):
                    if table is not None:
                        raise Refused(f"COMMIT expected before {text}")
                    table = text[1:]
                    if table not in tables:
                        raise Refused(f"can't initialize table '{table}': Table does not exist")
                    if not {"--noflush", "-n"} & set(args):
                        tables[table] = _empty_tables()[table]
                elif table is None:
                    raise Refused("no table specified")
                elif text == "COMMIT":
                    table = None
                elif text.startswith(":"):
                    self._declare(tables[table], text[1:].split())
                elif text.startswith("[") and {"--counters", "-c"} & set(args):
                    self._command(version, table, tables[table], _tokens(text)[1:])
                else:
                    self._command(version, table, tables[table], _tokens(text))
            except (Refused, ValueError) as exc:
                return 1, "", f"{tool}: line {n} failed: {exc}\n"
        if table is not None:
            return 1, "", f"{tool}: COMMIT expected at the end of the input\n"
        self._tables[version] = tables
        self._generation += 1
        return 0, "", ""

    def _declare(self, chains: dict[str, Chain], parts: list[str]) -> None:
        if len(parts) < 2:
            raise Refused("chain declaration needs a name and a policy")
        name, policy = parts[:2]
        if name in chains and chains[name].policy is not None:
            if policy not in POLICIES:
                raise Refused(f"Can't set policy '{policy}' on '{name}'")
            chains[name].policy = policy
            return
        if policy != "-":
            raise Refused(f"user chain '{name}' cannot have a policy")
        self._check_chain_name(name)
        chains[name] = Chain(None)          # created, or flushed if it was there

    def _iptables(self, version: int, args: list[str]) -> tuple[int, str, str]:
        table = "filter"
        while args and args[0] in ("-w", "--wait", "-t", "--table"):
            if args[0] in ("-t", "--table"):
                if len(args) < 2:
                    raise Refused("option '-t' requires an argument", 2)
                table, args = args[1], args[2:]
            else:
                args = args[2:] if len(args) > 1 and args[1].isdigit() else args[1:]
        if table not in BUILTIN_CHAINS:
            raise Refused(f"can't initialize table '{table}': Table does not exist")
        tables = copy.deepcopy(self._tables[version])
        found = self._command(version, table, tables[table], args)
        if found is False:
            stem = "iptables" if version == 4 else "ip6tables"
            return 1, "", f"{stem}: Bad rule (does a matching rule exist in that chain?).\n"
        if found is None:               # a write, not a check
            self._tables[version] = tables
            self._generation += 1
        return 0, "", ""

    def _command(self, version: int, table: str, chains: dict[str, Chain],
                 args: list[str]) -> bool | None:
        """Apply one command to ``chains``; for -C, whether the rule exists."""
        if not args:
            raise Refused("no command specified", 2)
        op, rest = args[0], args[1:]
        if op in ("-F", "--flush", "-X", "--delete-chain") and not rest:
            names = [c for c in chains if op in ("-F", "--flush") or chains[c].policy is None]
        else:
            if not rest:
                raise Refused(f"option '{op}' requires a chain name", 2)
            names, rest = [rest[0]], rest[1:]
        if op in ("-N", "--new-chain"):
            if names[0] in chains:
                raise Refused("Chain already exists")
            self._check_chain_name(names[0])
            chains[names[0]] = Chain(None)
            return None
        for name in names:
            if name not in chains:
                raise Refused(f"No chain/target/match by that name: {name}")
        chain = chains[names[0]]
        if op in ("-A", "--append", "-I", "--insert", "-C", "--check", "-D", "--delete"):
            position = None
            if op in ("-I", "--insert", "-D", "--delete") and rest and rest[0].isdigit():
                position, rest = int(rest[0]), rest[1:]
            if position is None or rest:
                self._check_rule(version, table, chains, rest)
            if op in ("-A", "--append"):
                chain.rules.append(_canonical(rest))
            elif op in ("-I", "--insert"):
                position = position or 1
                if not 1 <= position <= len(chain.rules) + 1:
                    raise Refused("Index of insertion too big")
                chain.rules.insert(position - 1, _canonical(rest))
            else:
                index = (position - 1 if position else
                         next((i for i, r in enumerate(chain.rules) if _tokens(r) == rest), -1))
                if not 0 <= index < len(chain.rules):
                    if op in ("-C", "--check"):
                        return False
                    raise Refused("Bad rule (does a matching rule exist in that chain?)")
                if op in ("-C", "--check"):
                    return True
                del chain.rules[index]
        elif op in ("-F", "--flush"):
            for name in names:
                chains[name].rules.clear()
        elif op in ("-X", "--delete-chain"):
            for name in names:
                if chains[name].policy is not None:
                    raise Refused(f"Can't delete built-in chain '{name}'")
                if chains[name].rules:
                    raise Refused(f"Directory not empty: chain '{name}' has rules")
                users = [c for c, ch in chains.items() if c not in names and any(
                    _target(_tokens(r))[0] == name for r in ch.rules)]
                if users:
                    raise Refused(f"Too many links: chain '{name}' is referenced by "
                                  f"{', '.join(users)}")
            for name in names:
                del chains[name]
        else:
            raise Refused(f"unknown command '{op}'", 2)
        return None

    def _check_rule(self, version: int, table: str, chains: dict[str, Chain],
                    spec: list[str]) -> None:
        modules, i = set(), 0
        while i < len(spec):
            option = spec[i]
            value = spec[i + 1] if i + 1 < len(spec) else None
            if option in NO_ARGUMENT:
                i += 1
                continue
            if option.startswith("-") and value is None:
                raise Refused(f"option '{option}' requires an argument", 2)
            if option in ("-m", "--match"):
                if MODULE_VERSIONS.get(value, version) != version:
                    raise Refused(f"Couldn't load match '{value}'", 2)
                modules.add(value)
            elif option in OPTION_MODULES and OPTION_MODULES[option] not in modules \
                    and not (option == "--icmp-type" and "icmp" in spec):
                raise Refused(f"unknown option '{option}'", 2)
            elif option in ("-s", "--source", "-d", "--destination"):
                try:
                    net = ipaddress.ip_network(value, strict=False)
                except ValueError:
                    net = None
                if net is None or net.version != version:
                    raise Refused(f"host/network '{value}' not found", 2)
            elif option == "--match-set":
                s = self._sets.get(value)
                if s is None:
                    raise Refused(f"Set {value} doesn't exist.", 2)
                if s.family != ("inet" if version == 4 else "inet6"):
                    raise Refused(f"The protocol family of set {value} is {s.family}, "
                                  "which is not applicable.", 2)
            i += 1 if option == "!" or not option.startswith("-") else 2
        target, goto = _target(spec)
        if target is None:
            return
        if goto or target not in TARGETS:
            if target not in chains or chains[target].policy is not None:
                raise Refused(f"Couldn't load target '{target}': No such file or directory", 2)
        elif target in NAT_TARGETS and table != "nat":
            raise Refused(f"{target} target: only valid in nat table")

    @staticmethod
    def _check_chain_name(name: str) -> None:
        if len(name) > CHAIN_NAME_MAX:
            raise Refused(f"chain name '{name}' too long (must be under "
                          f"{CHAIN_NAME_MAX + 1} chars)", 2)
        if name in TARGETS or name.startswith("-") or not name:
            raise Refused(f"chain name '{name}' is invalid", 2)

    # ipset ---------------------------------------------------------------------

    def _ipset(self, args: list[str], stdin: str) -> tuple[int, str, str]:
        exist = bool({"-exist", "-!"} & set(args))
        args = [a for a in args if a not in ("-exist", "-!")]
        if args == ["save"]:
            return 0, self._ipset_save(), ""
        if args == ["restore"]:
            if self._injected_failure("ipset"):
                return 1, "", "ipset: injected failure (kernel stub)\n"
            return self._ipset_script(stdin.splitlines(), exist, "Error in line {n}: ")
        if args and args[0] in ("create", "add", "del", "flush", "swap", "destroy"):
            return self._ipset_script([shlex.join(args)], exist, "")
        return 1, "", f"ipset: unknown command {' '.join(args)}\n"

    def _ipset_save(self) -> str:
        lines = []
        for name, s in self._sets.items():
            lines.append(f"create {name} {s.kind} family {s.family} hashsize 1024 "
                         f"maxelem {s.maxelem} bucketsize 12 initval 0x00000000")
            lines += [f"add {name} {m}" for m in sorted(s.members)]
        return "".join(f"{line}\n" for line in lines)

    def _ipset_script(self, lines: list[str], exist: bool, where: str):
        sets = copy.deepcopy(self._sets)
        for n, line in enumerate(lines, 1):
            words = line.split()
            if not words or words[0].startswith("#"):
                continue
            try:
                self._ipset_command(sets, words, exist)
            except (Refused, ValueError) as exc:
                return 1, "", f"ipset v7.stub: {where.format(n=n)}{exc}\n"
        self._sets = sets
        return 0, "", ""

    def _ipset_command(self, sets: dict[str, IpSet], words: list[str], exist: bool) -> None:
        op, args = words[0], words[1:]
        if op == "create":
            if len(args) < 2:
                raise Refused("create needs a name and a type")
            name, kind, options = args[0], args[1], dict(zip(args[2::2], args[3::2]))
            if len(name) > SET_NAME_MAX:
                raise Refused(f"Syntax error: setname '{name}' is longer than "
                              f"{SET_NAME_MAX} characters")
            if kind not in SET_TYPES:
                raise Refused(f"Syntax error: typename '{kind}' is unknown")
            unknown = set(options) - {"family", "hashsize", "maxelem", "bucketsize", "initval"}
            if unknown or len(args) % 2:
                raise Refused(f"Syntax error: unknown argument {sorted(unknown) or args[-1]}")
            family = options.get("family", "inet")
            if family not in ("inet", "inet6"):
                raise Refused(f"Syntax error: unknown family {family}")
            new = IpSet(kind, family, int(options.get("maxelem", 65536)))
            old = sets.get(name)
            if old is not None:
                if not exist or (old.kind, old.family, old.maxelem) != \
                        (new.kind, new.family, new.maxelem):
                    raise Refused("Set cannot be created: set with the same name already "
                                  "exists")
                return
            sets[name] = new
        elif op in ("add", "del"):
            if len(args) != 2:
                raise Refused(f"{op} needs a set name and an element")
            s = _existing(sets, args[0])
            member = _member(s, args[1])
            if op == "add":
                if member in s.members and not exist:
                    raise Refused("Element cannot be added to the set: it's already added")
                if member not in s.members and len(s.members) >= s.maxelem:
                    raise Refused("Hash is full, cannot add more elements")
                s.members.add(member)
            elif member in s.members:
                s.members.discard(member)
            elif not exist:
                raise Refused("Element cannot be deleted from the set: it's not added")
        elif op == "flush":
            for name in args or list(sets):
                _existing(sets, name).members.clear()
        elif op == "swap":
            if len(args) != 2:
                raise Refused("swap needs two set names")
            a, b = _existing(sets, args[0]), _existing(sets, args[1])
            if (a.kind, a.family) != (b.kind, b.family):
                raise Refused("The sets cannot be swapped: their type does not match")
            # Rules follow the name (the kernel swaps the references too).
            sets[args[0]], sets[args[1]] = b, a
        elif op == "destroy":
            for name in args or list(sets):
                _existing(sets, name)
                if self._set_in_use(name):
                    raise Refused("Set cannot be destroyed: it is in use by a kernel "
                                  "component")
                del sets[name]
        else:
            raise Refused(f"Syntax error: unknown command {op}")

    def _set_in_use(self, name: str) -> bool:
        for tables in self._tables.values():
            for chains in tables.values():
                for chain in chains.values():
                    for rule in chain.rules:
                        words = _tokens(rule)
                        if any(w == "--match-set" and words[i + 1] == name
                               for i, w in enumerate(words[:-1])):
                            return True
        return False


def _target(spec: list[str]) -> tuple[str | None, bool]:
    """A rule's -j or -g target (None if it has none), and whether it is a goto."""
    for i, word in enumerate(spec[:-1]):
        if word in ("-j", "--jump", "-g", "--goto") and (i == 0 or spec[i - 1] != "--comment"):
            return spec[i + 1], word in ("-g", "--goto")
    return None, False


def _existing(sets: dict[str, IpSet], name: str) -> IpSet:
    if name not in sets:
        raise Refused(f"The set with the given name does not exist: {name}")
    return sets[name]


def _member(s: IpSet, text: str) -> str:
    """An element as ipset prints it back, refusing one of the other family."""
    version = 4 if s.family == "inet" else 6
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        net = None
    if net is None or net.version != version:
        raise Refused(f"Syntax error: cannot parse {text}: resolving to IPv{version} "
                      "address failed")
    host = net.prefixlen == net.max_prefixlen
    if s.kind == "hash:ip" and not host:
        raise Refused(f"the kernel stub does not model ranges in hash:ip ({text})")
    if s.kind == "hash:net" and net.prefixlen == 0:
        raise Refused("The value of the CIDR parameter of the IP address is invalid")
    return str(net.network_address) if host else str(net)
