"""CURVE keys and who may do what: ZeroMQ's own authentication and encryption
(CurveZMQ, with pyzmq's ``zmq.auth`` as the ZAP handler), shared by shards,
clients and the command line. No lock logic here.

Interface:
    keygen(directory, name) -> (public_file, secret_file)   a key pair (zmq.auth certificates)
    public_key(spec) -> bytes       a z85 public key from a key file or a 40-char z85 string
    ClientCurve(secret_file, server_key)         a client's (or admin's) credentials
        .for_endpoint(i) -> (public, secret, server_public)     .apply(sock, i)
    client_curve_from_env() -> ClientCurve | None   LOCKMGR_CURVE_SECRET_FILE + LOCKMGR_CURVE_SERVER_KEY
    ServerCurve(secret_file, *, client_keys_dir, admin_keys_dir=None, peer_keys_dir=None,
                reload_interval=5.0)             a shard's key pair and the keys it admits
        .public, .secret        the shard's own key pair (it is also its key as a peer client)
        .allowed(user) / .is_admin(user) / .is_peer(user)     frozenset lookups (user: z85 str)
        .reload() -> bool       re-read the key directories (SIGHUP; a timer calls maybe_reload)
        .start(ctx) / .stop()   the ZAP handler (zmq.auth ThreadAuthenticator) on ``ctx``
    is_loopback(endpoint) -> bool   tcp on 127.0.0.0/8, ::1 or localhost; ipc and inproc

The identity a shard binds a session to is the ZAP User-Id of the connection,
which pyzmq's authenticator sets to the client's z85 public key; every frame
carries it (``zmq.Frame.get("User-Id")``). Design: docs/security.md.
"""

import ipaddress
import os
import threading
from typing import FrozenSet, List, Optional, Sequence, Tuple, Union

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from ..errors import InvalidRequest

__all__ = ["keygen", "public_key", "ClientCurve", "ServerCurve", "client_curve_from_env", "is_loopback"]

KeySpec = Union[str, bytes, os.PathLike]


def _need_curve():
    if not zmq.has("curve"):
        raise InvalidRequest("this libzmq has no CURVE support (it needs libsodium or tweetnacl)")


def keygen(directory: str, name: str) -> Tuple[str, str]:
    """Make a CURVE key pair in ``directory``: ``NAME.key`` (the public key, to
    copy into a shard's client, admin or peer key directory) and
    ``NAME.key_secret`` (the secret key, for the one who authenticates with it;
    mode 0600). Refuses to overwrite an existing pair."""
    _need_curve()
    if not name or os.sep in name or name.startswith("."):
        raise InvalidRequest(f"a key name must be a plain file name; got {name!r}")
    os.makedirs(directory, exist_ok=True)
    pub = os.path.join(directory, name + ".key")
    sec = os.path.join(directory, name + ".key_secret")
    for f in (pub, sec):
        if os.path.exists(f):
            raise InvalidRequest(f"{f} exists; refusing to overwrite a key")
    old = os.umask(0o077)
    try:
        zmq.auth.create_certificates(directory, name)
    finally:
        os.umask(old)
    os.chmod(pub, 0o644)
    return pub, sec


def _is_z85_key(s) -> bool:
    return len(s) == 40


def public_key(spec: KeySpec) -> bytes:
    """A z85 public key (40 bytes) from ``spec``: a key file made by keygen (the
    public ``.key`` or the ``.key_secret``) or the 40-character z85 text itself."""
    if isinstance(spec, bytes) and _is_z85_key(spec):
        return spec
    if isinstance(spec, str) and _is_z85_key(spec) and not os.path.exists(spec):
        return spec.encode("ascii")
    path = os.fsdecode(spec)
    try:
        pub, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise InvalidRequest(f"cannot read a CURVE public key from {path!r}: {e}") from None
    if pub is None or len(pub) != 40:
        raise InvalidRequest(f"{path!r} holds no CURVE public key")
    return pub


def _secret_pair(path: KeySpec) -> Tuple[bytes, bytes]:
    p = os.fsdecode(path)
    try:
        pub, sec = zmq.auth.load_certificate(p)
    except (OSError, ValueError) as e:
        raise InvalidRequest(f"cannot read a CURVE secret key from {p!r}: {e}") from None
    if not sec:
        raise InvalidRequest(f"{p!r} holds no secret key (use the NAME.key_secret file lockmgr keygen made)")
    return pub, sec


class ClientCurve:
    """A client's CURVE credentials: its key pair (``secret_file``, the
    ``.key_secret`` file from ``lockmgr keygen``) and the shard's public key
    (``server_key``: one key file or z85 string for every shard, or a list of
    them in shard order)."""

    def __init__(self, secret_file: KeySpec, server_key: Union[KeySpec, Sequence[KeySpec]]) -> None:
        _need_curve()
        self.public, self.secret = _secret_pair(secret_file)
        if isinstance(server_key, (list, tuple)):
            self.server_keys: List[bytes] = [public_key(k) for k in server_key]
            if not self.server_keys:
                raise InvalidRequest("server_key: an empty list")
        else:
            self.server_keys = [public_key(server_key)]   # type: ignore[arg-type]

    def for_endpoint(self, i: int) -> Tuple[bytes, bytes, bytes]:
        keys = self.server_keys
        if len(keys) == 1:
            return self.public, self.secret, keys[0]
        if i >= len(keys):
            raise InvalidRequest(f"server_key lists {len(keys)} keys; shard {i} has none")
        return self.public, self.secret, keys[i]

    def apply(self, sock: "zmq.Socket", i: int = 0) -> None:
        """Make ``sock`` (not yet connected) a CURVE client of shard ``i``."""
        pub, sec, srv = self.for_endpoint(i)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, pub)
        sock.setsockopt(zmq.CURVE_SECRETKEY, sec)
        sock.setsockopt(zmq.CURVE_SERVERKEY, srv)


def client_curve_from_env() -> Optional[ClientCurve]:
    """Credentials from LOCKMGR_CURVE_SECRET_FILE and LOCKMGR_CURVE_SERVER_KEY (the
    command line's inspection commands use them), or None if neither is set."""
    sec = os.environ.get("LOCKMGR_CURVE_SECRET_FILE")
    srv = os.environ.get("LOCKMGR_CURVE_SERVER_KEY")
    if not sec and not srv:
        return None
    if not (sec and srv):
        raise InvalidRequest("set both LOCKMGR_CURVE_SECRET_FILE and LOCKMGR_CURVE_SERVER_KEY (or neither)")
    keys: Union[str, List[str]] = srv.split(",") if "," in srv else srv
    return ClientCurve(sec, keys)


def _load_dir(d: Optional[str]) -> FrozenSet[str]:
    if d is None:
        return frozenset()
    if not os.path.isdir(d):
        raise InvalidRequest(f"key directory {d!r} does not exist")
    out = set()
    for name in sorted(os.listdir(d)):
        if not name.endswith(".key"):
            continue
        try:
            pub, _ = zmq.auth.load_certificate(os.path.join(d, name))
        except (OSError, ValueError):
            continue                 # a malformed file admits nobody (it is reported by reload())
        if pub is not None and len(pub) == 40:
            out.add(pub.decode("ascii"))
    return frozenset(out)


def _dir_stamp(dirs) -> tuple:
    stamp: list = []
    for d in dirs:
        if d is None:
            continue
        try:
            stamp.append((d, os.stat(d).st_mtime_ns,
                          tuple(sorted((n, os.stat(os.path.join(d, n)).st_mtime_ns)
                                       for n in os.listdir(d) if n.endswith(".key")))))
        except OSError:
            stamp.append((d, None))
    return tuple(stamp)


class ServerCurve:
    """A shard's CURVE side: its key pair and the public keys it admits.

    ``client_keys_dir``: the ``.key`` files of the clients it admits;
    ``admin_keys_dir``: those whose requests may be admin requests (SNAPSHOT,
    INDOUBT, STATS, a DECIDE of another key's transaction, ...); they are
    admitted too; ``peer_keys_dir``: the other shards' public keys (a shard's
    own key is always a peer key, so a cluster whose shards share one key pair
    needs none). Re-read by ``reload()`` (SIGHUP) and, every
    ``reload_interval`` seconds, by ``maybe_reload()`` when a file changed."""

    def __init__(self, secret_file: KeySpec, *, client_keys_dir: Optional[str], admin_keys_dir: Optional[str] = None,
                 peer_keys_dir: Optional[str] = None, reload_interval: float = 5.0) -> None:
        _need_curve()
        pub, sec = _secret_pair(secret_file)
        self.public, self.secret = pub, sec
        self.user = pub.decode("ascii")              # this shard's own identity (as a peer)
        self.dirs = (client_keys_dir, admin_keys_dir, peer_keys_dir)
        self.reload_interval = reload_interval
        self._mu = threading.Lock()
        self.clients: FrozenSet[str] = frozenset()
        self.admins: FrozenSet[str] = frozenset()
        self.peers: FrozenSet[str] = frozenset()
        self.admitted: FrozenSet[str] = frozenset()
        self._stamp: tuple = ()
        self.reloads = 0
        self.reload()
        self._auth: Optional[ThreadAuthenticator] = None

    def reload(self) -> bool:
        """Re-read the key directories; True if the admitted keys changed. A key
        removed from them is refused from the next frame on (connections made
        with it included)."""
        c, a, p = (_load_dir(d) for d in self.dirs)
        p = p | {self.user}
        with self._mu:
            changed = (c, a, p) != (self.clients, self.admins, self.peers)
            self.clients, self.admins, self.peers = c, a, p
            self.admitted = c | a | p
            self._stamp = _dir_stamp(self.dirs)
            self.reloads += 1
        return changed

    def maybe_reload(self) -> bool:
        """reload() if a key directory changed since the last one."""
        if _dir_stamp(self.dirs) != self._stamp:
            return self.reload()
        return False

    # ZAP (the authenticator's thread): the key must be admitted now
    def callback(self, domain, z85_key) -> bool:
        k = z85_key.decode("ascii") if isinstance(z85_key, bytes) else z85_key
        return k in self.admitted

    def start(self, ctx: "zmq.Context") -> None:
        """Start the ZAP handler on ``ctx`` (one per context)."""
        auth = ThreadAuthenticator(ctx)
        auth.start()
        auth.configure_curve_callback("*", credentials_provider=self)
        self._auth = auth

    def stop(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def apply_server(self, sock: "zmq.Socket") -> None:
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)

    def apply_peer(self, sock: "zmq.Socket", server_key: Optional[bytes] = None) -> None:
        """Make ``sock`` a CURVE client of a peer shard (with this shard's key pair;
        the peer's public key is this shard's own unless given)."""
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)
        sock.setsockopt(zmq.CURVE_SERVERKEY, server_key or self.public)


def is_loopback(endpoint: str) -> bool:
    """True for an endpoint only this host can reach: tcp on 127.0.0.0/8, ::1 or
    localhost, and ipc:// or inproc://."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    if not endpoint.startswith("tcp://"):
        return False
    hostport = endpoint[6:]
    if ";" in hostport:                   # tcp://SRC;DST: the address bound is DST's for connect only
        hostport = hostport.split(";", 1)[1]
    host = hostport.rsplit(":", 1)[0] if ":" in hostport else hostport
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False                      # an interface name or "*": every interface
