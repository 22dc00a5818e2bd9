"""The loopback TCP ports of one ``weed server`` (eight, chosen free) and the Unix sockets weed names after them."""

from __future__ import annotations

import socket
from dataclasses import asdict, dataclass
from pathlib import Path

HOST = "127.0.0.1"


@dataclass(frozen=True)
class WeedPorts:
    """Every TCP port one ``weed server`` listens on (all on 127.0.0.1)."""

    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int
    s3: int
    s3_grpc: int

    @classmethod
    def pick_free(cls) -> WeedPorts:
        """Eight distinct ports that are free now (held open together while choosing)."""
        sockets = []
        try:
            for _ in range(8):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.bind((HOST, 0))
                sockets.append(sock)
            return cls(*(sock.getsockname()[1] for sock in sockets))
        finally:
            for sock in sockets:
                sock.close()

    def all_free(self) -> bool:
        """Whether none of the ports is in use on 127.0.0.1 (lingering TIME_WAIT connections aside,
        which weed's listeners, like every Go listener, bind over with SO_REUSEADDR)."""
        for port in asdict(self).values():
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((HOST, port))
                except OSError:
                    return False
        return True

    def local_sockets(self) -> list[Path]:
        """The Unix sockets weed creates next to these ports (always under /tmp, whatever TMPDIR says)."""
        tmp = Path("/tmp")
        names = [
            f"seaweedfs-master-grpc-{self.master_grpc}.sock",
            f"seaweedfs-volume-grpc-{self.volume_grpc}.sock",
            f"seaweedfs-filer-{self.filer}.sock",
            f"seaweedfs-filer-grpc-{self.filer_grpc}.sock",
            f"seaweedfs-s3-{self.s3}.sock",
            f"seaweedfs-s3-grpc-{self.s3_grpc}.sock",
        ]
        return [tmp / name for name in names]
