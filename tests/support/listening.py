"""Which processes listen on which addresses, from /proc (no ss or lsof needed)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

_LISTEN = "0A"


@dataclass(frozen=True)
class Socket:
    address: str
    port: int
    pid: int
    process: str

    @property
    def loopback(self) -> bool:
        address = ipaddress.ip_address(self.address)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            return address.ipv4_mapped.is_loopback
        return address.is_loopback


def listening() -> list[Socket]:
    owners = _socket_owners()
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6", "/proc/net/udp", "/proc/net/udp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            udp = "udp" in table
            if (not udp and state != _LISTEN) or inode not in owners:
                continue
            hex_address, hex_port = local.split(":")
            pid, process = owners[inode]
            found.append(Socket(_address(hex_address), int(hex_port, 16), pid, process))
    return found


def ray_sockets() -> list[Socket]:
    """Sockets of Ray's processes: GCS, raylets, workers, dashboard, Serve replicas."""
    return [s for s in listening() if _is_ray(s.process)]


def _is_ray(process: str) -> bool:
    return process.startswith(("ray::", "gcs_server", "raylet")) or "/ray/" in process


def _socket_owners() -> dict[str, tuple[int, str]]:
    owners: dict[str, tuple[int, str]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    owners[target[8:-1]] = (int(proc.name), cmdline.strip())
        except OSError:
            continue  # the process ended, or is not ours to read
    return owners


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    # IPv6 in /proc is four little-endian 32-bit words.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return str(ipaddress.IPv6Address(words))
