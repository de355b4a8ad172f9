"""In-memory stand-ins that hold state, for unit tests."""

from __future__ import annotations

import threading

from pyetcd import events as etcd_events
from pyetcd.etcdrpc import kv_pb2

from calicopy.datastore.etcd_watch import WatchEnded
from calicopy.datastore.store import KV, LeaseExpired, Txn


def _event(kind, key: str, value: str, revision: int):
    """An event as the real watch delivers it (pyetcd's PutEvent or DeleteEvent)."""
    return etcd_events.new_event(kv_pb2.Event(type=kind, kv=kv_pb2.KeyValue(
        key=key.encode(), value=value.encode(), mod_revision=revision)))


class _Response:
    def __init__(self, events):
        self.events = events


class MemoryStore:
    """A dict-backed Store with etcd's revision semantics, and leases that
    expire only when a test says so (``expire_lease``)."""

    endpoints = "memory"

    def __init__(self):
        self.data: dict[str, KV] = {}
        self.revision = 0
        self.commits = 0
        self.reads: dict[str, int] = {}         # key -> how many times get() read it
        self.watches: dict[object, tuple] = {}  # handle -> (prefix, on_event)
        self.lock = threading.Lock()
        self.leases: dict[int, set[str]] = {}     # live lease -> its keys
        self.keepalives = 0

    def get(self, key):
        self.reads[key] = self.reads.get(key, 0) + 1
        return self.data.get(key)

    def watch(self, prefix, on_event):
        handle = object()
        self.watches[handle] = (prefix, on_event)
        return handle

    def cancel_watch(self, handle):
        self.watches.pop(handle, None)

    def end_watches(self):
        """Every watch ends, as when etcd cancels them: each owner is told once."""
        ended, self.watches = self.watches, {}
        for _, on_event in ended.values():
            on_event(WatchEnded("the test ended it"))

    def list(self, prefix):
        return [kv for k, kv in sorted(self.data.items()) if k.startswith(prefix)]

    def snapshot(self, prefix):
        with self.lock:
            return self.revision, self.list(prefix)

    def commit(self, txn: Txn) -> int:
        with self.lock:
            for c in txn.compares:
                kv = self.data.get(c.key)
                if (kv.mod_revision if kv else 0) != c.mod_revision:
                    return 0
            for lease in txn.leases.values():
                if lease and lease not in self.leases:
                    raise LeaseExpired(lease)
            self.revision += 1
            self.commits += 1
            for key, value in txn.puts.items():
                self.data[key] = KV(key, value, self.revision)
                for keys in self.leases.values():
                    keys.discard(key)
                if txn.leases.get(key):
                    self.leases[txn.leases[key]].add(key)
            for key in txn.deletes:
                self.data.pop(key, None)
            revision = self.revision
        self._notify(txn, revision)
        return revision

    def _notify(self, txn: Txn, revision: int) -> None:
        """Watchers get the commit's events, as etcd's watches deliver them."""
        changed = [_event(kv_pb2.Event.PUT, k, v, revision) for k, v in txn.puts.items()] + \
            [_event(kv_pb2.Event.DELETE, k, "", revision) for k in txn.deletes]
        for prefix, on_event in list(self.watches.values()):
            mine = [e for e in changed if e.key.decode().startswith(prefix)]
            if mine:
                on_event(_Response(mine))

    def grant_lease(self, ttl):
        with self.lock:
            self._granted = getattr(self, "_granted", 0) + 1
            lease = 1000 + self._granted
            self.leases[lease] = set()
            return lease

    def refresh_lease(self, lease):
        self.keepalives += 1
        return lease in self.leases

    def expire_lease(self, lease):
        """The lease ran out: its keys go, as one change."""
        with self.lock:
            keys = self.leases.pop(lease)
            if keys:
                self.revision += 1
            for key in keys:
                self.data.pop(key, None)

    def delete_prefix(self, prefix):
        with self.lock:
            gone = [k for k in self.data if k.startswith(prefix)]
            for k in gone:
                del self.data[k]
            return len(gone)

    def json(self, key):
        kv = self.data.get(key)
        return kv.json() if kv else None


class FakeDataplane:
    """The kernel as a dict: host interface -> what the workload side holds
(its namespace, name, MAC, addresses and the pair's MTU, 1500 unless set).

    ``fail_on`` makes ensure() raise for chosen workloads, to test rollback;
    ``namespaces`` stands for the workload namespaces and their other links.
    """

    def __init__(self):
        self.interfaces: dict[str, dict] = {}
        self.namespaces: dict[str, set[str]] = {}
        self.fail_on: set[str] = set()
        self.ids: dict[str, str] = {}       # path -> namespace identity, when not the path
        self._macs = 0

    def ensure(self, spec):
        from services.endpoint.errors import DataplaneError, InterfaceInUse
        if spec.workload in self.fail_on:
            raise DataplaneError(f"Kernel refused to create {spec.host_interface}.")
        current = self.interfaces.get(spec.host_interface)
        if not spec.netns:          # detached: the orchestrator holds the workload side
            if current is None and not spec.peer_name:
                return spec.mac
            self._macs += 1
            current = current or {"netns": "", "name": spec.peer_name,
                                  "mac": spec.mac or f"02:00:00:00:01:{self._macs:02x}",
                                  "mtu": 1500}
            current["ips"] = sorted(spec.ips)
            current["mtu"] = spec.mtu or current.get("mtu", 1500)
            self.interfaces[spec.host_interface] = current
            return current["mac"]
        links = self.namespaces.setdefault(spec.netns, set())
        if current is None:
            if spec.interface_name in links:
                raise InterfaceInUse(spec.interface_name, spec.workload)
            self._macs += 1
            current = {"netns": spec.netns, "name": spec.interface_name,
                       "mac": spec.mac or f"02:00:00:00:00:{self._macs:02x}", "mtu": 1500}
            links.add(spec.interface_name)
        current["ips"] = sorted(spec.ips)
        current["mtu"] = spec.mtu or current.get("mtu", 1500)
        self.interfaces[spec.host_interface] = current
        return current["mac"]

    def remove(self, host_interface):
        gone = self.interfaces.pop(host_interface, None)
        if gone:
            self.namespaces.get(gone["netns"], set()).discard(gone["name"])

    def host_interfaces(self):
        return set(self.interfaces)

    def check_workload(self, path, workload):
        from calicopy.netns import WorkloadNotRunning
        if path not in self.namespaces:
            raise WorkloadNotRunning(workload)

    def workload_alive(self, path):
        return path in self.namespaces

    def namespace_id(self, path):
        return self.ids.get(path, path) if path in self.namespaces else ""

    def stop_workload(self, path):
        """The namespace goes, and the veth pairs in it with it."""
        self.namespaces.pop(path, None)
        for name in [n for n, i in self.interfaces.items() if i["netns"] == path]:
            del self.interfaces[name]

    def workload_has_interface(self, path, name):
        return name in self.namespaces.get(path, set())
