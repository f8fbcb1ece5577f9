"""
Drives several mcq nodes through a real sharding memcache client, for test/e2e/shard.test.ts.

  python3 shard-client.py '{"client": "pymemcache" | "pymemcache-stock" | "libmemcached",
                            "ports": [p1, p2, ...], "ops": [["set", key, body] | ["get", key], ...]}'

prints one JSON list: per op, true/false for a set, the body or null for a get, or
"error: <type>" when the client raised. A set that raised is retried (up to 3 tries), as a
producer would: pymemcache then drops the dead node from its ring and the key goes elsewhere.

The hasher sees the queue name only (the key up to its first "/"), so that `get q/open` goes
to the node that holds `q`. "pymemcache-stock" keeps pymemcache's default hasher over the whole
key, to show what that breaks.
"""
import ctypes
import json
import sys

spec = json.loads(sys.argv[1])
servers = [("127.0.0.1", p) for p in spec["ports"]]


def queue_of(key):
    return key.split("/", 1)[0]


def pymemcache_client(stock):
    from pymemcache.client.hash import HashClient
    from pymemcache.client.rendezvous import RendezvousHash

    class QueueNameHash(RendezvousHash):
        def get_node(self, key):
            return super().get_node(queue_of(key))

    # retry_attempts=0: a node that refuses a connection leaves the ring at once (for an hour).
    return HashClient(servers, hasher=RendezvousHash if stock else QueueNameHash, retry_attempts=0,
                      dead_timeout=3600, connect_timeout=2, timeout=5, default_noreply=False)


class Libmemcached:
    """libmemcached through ctypes (Debian ships the library, not its headers): ketama
    distribution, and the *_by_key calls with the queue name as the group key."""

    BEHAVIOR_KETAMA = 3
    BEHAVIOR_DISTRIBUTION = 9
    DISTRIBUTION_CONSISTENT_KETAMA = 2

    def __init__(self):
        lib = ctypes.CDLL("libmemcached.so.11")
        libc = ctypes.CDLL(None)
        lib.memcached.restype = ctypes.c_void_p
        lib.memcached.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
        lib.memcached_behavior_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64]
        lib.memcached_behavior_get.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.memcached_behavior_get.restype = ctypes.c_uint64
        lib.memcached_set_by_key.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
                                             ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_long,
                                             ctypes.c_uint32]
        lib.memcached_get_by_key.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
                                             ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t),
                                             ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_int)]
        lib.memcached_get_by_key.restype = ctypes.c_void_p
        libc.free.argtypes = [ctypes.c_void_p]
        config = " ".join("--SERVER=%s:%d" % s for s in servers).encode()
        self.lib, self.libc = lib, libc
        self.memc = lib.memcached(config, len(config))
        assert lib.memcached_behavior_set(self.memc, self.BEHAVIOR_KETAMA, 1) == 0
        assert lib.memcached_behavior_get(self.memc, self.BEHAVIOR_DISTRIBUTION) == self.DISTRIBUTION_CONSISTENT_KETAMA

    def set(self, key, body):
        group, k = queue_of(key).encode(), key.encode()
        return self.lib.memcached_set_by_key(self.memc, group, len(group), k, len(k), body, len(body), 0, 0) == 0

    def get(self, key):
        group, k = queue_of(key).encode(), key.encode()
        length, flags, error = ctypes.c_size_t(), ctypes.c_uint32(), ctypes.c_int()
        p = self.lib.memcached_get_by_key(self.memc, group, len(group), k, len(k), ctypes.byref(length),
                                          ctypes.byref(flags), ctypes.byref(error))
        if not p:
            return None
        body = ctypes.string_at(p, length.value)
        self.libc.free(p)
        return body


client = Libmemcached() if spec["client"] == "libmemcached" else pymemcache_client(spec["client"] == "pymemcache-stock")
out = []
for op in spec["ops"]:
    if op[0] == "set":
        result = None
        for attempt in range(3):
            try:
                result = bool(client.set(op[1], op[2].encode()))
                break
            except Exception as e:
                result = "error: " + type(e).__name__
        out.append(result)
    else:
        body = client.get(op[1])
        out.append(None if body is None else body.decode())
print(json.dumps(out))
