"""A simulated fleet of light JSON-RPC nodes, many per process, for measuring at scale.

Real anvils cost ~21 MiB and a process each; a thousand-node fleet over three regions does not fit a
2-core machine that way. Each simulated node here is a listening socket on 127.0.0.1 answering the
JSON-RPC an EVM probe asks (single calls and batches, keep-alive or not) with its own state:

- its chain's head, from the chain's block time and the clock, minus the node's lag;
- a fault: `stalled` (the head stopped at a time, the block's timestamp ages), `lagging` (more blocks
  behind than the chain allows, still moving), `down` (nothing listens: connection refused) or
  `frozen` (accepts, never answers: the probe's read timeout);
- its region's network round trip: one round trip before the first request of a connection (the TCP
  handshake) and one per request, as a client far from the node sees them.

The spec is plain JSON (written by `build_spec`) so the bench and the tests create the same fleet; each
serving process takes a slice of it:

    python -m lab.simfleet serve --spec spec.json --part 0 --parts 2    # prints "ready N" once listening

Only loopback: every node binds 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from dataclasses import asdict, dataclass, field

CLIENT_VERSION = "Geth/v1.14.8-stable-a9523b64/linux-amd64/go1.22.6"
FAULTS = ("stalled", "lagging", "down", "frozen")
FAULT_OFFSETS = {"stalled": 7, "lagging": 23, "down": 41, "frozen": 13}  # distinct nodes for each fault


@dataclass(frozen=True)
class SimChain:
    name: str
    chain_id: int
    block_time_s: float
    max_lag_blocks: int
    max_head_age_s: int
    genesis_time: float  # unix time of block 0


@dataclass(frozen=True)
class SimNode:
    name: str
    chain: str
    region: str
    host: str
    port: int
    rtt_s: float
    lag: int = 0
    fault: str | None = None
    stalled_at: float | None = None  # unix time the head stopped (stalled)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Spec:
    chains: dict[str, SimChain]
    nodes: list[SimNode]
    references: list[SimNode] = field(default_factory=list)  # one per chain, in the nearest region

    def to_json(self) -> str:
        return json.dumps({"chains": {k: asdict(c) for k, c in self.chains.items()},
                           "nodes": [asdict(n) for n in self.nodes],
                           "references": [asdict(n) for n in self.references]})

    @classmethod
    def from_json(cls, text: str) -> "Spec":
        raw = json.loads(text)
        return cls({k: SimChain(**c) for k, c in raw["chains"].items()}, [SimNode(**n) for n in raw["nodes"]],
                   [SimNode(**n) for n in raw["references"]])


def free_ports(count: int) -> list[int]:
    """Ports the kernel says are free now (held open together so none repeats)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def build_spec(nodes: int, regions: dict[str, float], *, nodes_per_host: int = 10,
               fault_every: dict[str, int] | None = None, halted: tuple[str, ...] = (),
               now: float | None = None) -> Spec:
    """`nodes` spread evenly over `regions` (name -> round trip in seconds) and three chains with the block
    times of Ethereum, Base and Polygon. Faults by index, deterministic: `fault_every` maps a fault to N
    (every Nth node has it; default 1 in 50 stalled, 1 in 50 lagging, 1 in 100 down, none frozen).
    `halted` chains stopped as a whole: every node and the reference stalled at the same block (a chain
    incident, which restarting nodes cannot fix)."""
    now = time.time() if now is None else now
    chains = {
        "sim-eth": SimChain("sim-eth", 1, 12.0, 3, 90, now - 12.0 * 20_000_000),
        "sim-base": SimChain("sim-base", 8453, 2.0, 10, 30, now - 2.0 * 30_000_000),
        "sim-polygon": SimChain("sim-polygon", 137, 2.0, 10, 60, now - 2.0 * 60_000_000),
    }
    if unknown := set(halted) - set(chains):
        raise ValueError(f"halted: unknown chain(s) {', '.join(sorted(unknown))} (known: {', '.join(chains)})")
    every = {"stalled": 50, "lagging": 50, "down": 100} if fault_every is None else fault_every
    names = list(regions)
    ports = free_ports(nodes + len(chains))
    out = []
    for i in range(nodes):
        region = names[i % len(names)]
        chain = list(chains)[(i // len(names)) % len(chains)]
        fault = next((f for f, n in every.items() if n and i % n == FAULT_OFFSETS[f] % n), None)
        fault = "stalled" if chain in halted else fault
        c = chains[chain]
        out.append(SimNode(
            name=f"{region}-{chain.removeprefix('sim-')}-{i:04d}", chain=chain, region=region,
            host=f"{region}-h{i // (nodes_per_host * len(names)):03d}", port=ports[i], rtt_s=regions[region],
            # Behind by more than the chain allows, yet its head younger than max_head_age_s: it still moves.
            lag=(c.max_lag_blocks + 1) if fault == "lagging" else i % 2,
            fault=fault, stalled_at=(now - 10 * c.max_head_age_s) if fault == "stalled" else None))
    nearest = min(regions, key=regions.get)
    refs = [SimNode(name=f"ref-{name}", chain=name, region=nearest, host="ref", port=ports[nodes + j],
                    rtt_s=regions[nearest], fault="stalled" if name in halted else None,
                    stalled_at=(now - 10 * chains[name].max_head_age_s) if name in halted else None)
            for j, name in enumerate(chains)]
    return Spec(chains, out, refs)


def inventory(spec: Spec) -> dict:
    """The simulated fleet as an operator's inventory (what load_inventory validates and the probes read)."""
    hosts = {}
    for n in spec.nodes:
        hosts.setdefault(n.host, {"address": "127.0.0.1", "ssh_user": "node", "ssh_identity_block": "fleet-ssh",
                                  "region": n.region})
    return {
        "chains": {c.name: {"family": "ethereum", "chain_id": c.chain_id,
                            "references": [r.url for r in spec.references if r.chain == c.name],
                            "max_lag_blocks": c.max_lag_blocks, "max_head_age_seconds": c.max_head_age_s}
                   for c in spec.chains.values()},
        "hosts": hosts,
        "nodes": {n.name: {"chain": n.chain, "client": "geth", "host": n.host, "rpc_url": n.url,
                           "service": {"manager": "systemd", "name": "geth"}, "datadir": "/var/lib/geth"}
                  for n in spec.nodes},
    }


def expected_status(node: SimNode) -> str:
    """What fleet-health must classify the node as."""
    return {"stalled": "stalled", "lagging": "lagging", "down": "down", "frozen": "down"}.get(node.fault, "healthy")


# ---------------------------------------------------------------- answering

def _block(chain: SimChain, number: int) -> dict:
    h = f"0x{number:064x}"
    return {"number": hex(number), "hash": h, "parentHash": f"0x{max(number - 1, 0):064x}",
            "timestamp": hex(int(chain.genesis_time + number * chain.block_time_s)),
            "gasLimit": hex(30_000_000), "gasUsed": hex(12_000_000), "baseFeePerGas": hex(7_000_000_000),
            "miner": "0x" + "00" * 20, "extraData": "0x", "transactions": [], "uncles": [],
            "nonce": "0x0000000000000000", "difficulty": "0x0", "size": hex(1000),
            "logsBloom": "0x" + "00" * 256, "sha3Uncles": "0x" + "00" * 32, "stateRoot": "0x" + "00" * 32,
            "receiptsRoot": "0x" + "00" * 32, "transactionsRoot": "0x" + "00" * 32, "mixHash": "0x" + "00" * 32}


def head_of(node: SimNode, chain: SimChain, now: float) -> int:
    at = node.stalled_at if node.fault == "stalled" else now
    return max(int((at - chain.genesis_time) // chain.block_time_s) - node.lag, 0)


def answer(node: SimNode, chain: SimChain, call: dict, now: float) -> dict:
    method, rid = call.get("method"), call.get("id")
    head = head_of(node, chain, now)
    results = {
        "eth_blockNumber": lambda: hex(head),
        "eth_chainId": lambda: hex(chain.chain_id),
        "eth_syncing": lambda: False,
        "net_peerCount": lambda: hex(25),
        "net_version": lambda: str(chain.chain_id),
        "web3_clientVersion": lambda: CLIENT_VERSION,
        "eth_getBlockByNumber": lambda: _block(chain, head if (call.get("params") or ["latest"])[0] == "latest"
                                               else min(int(call["params"][0], 16), head)),
    }
    if method not in results:
        return {"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": f"the method {method} does not exist"}}
    return {"jsonrpc": "2.0", "id": rid, "result": results[method]()}


async def _serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, node: SimNode,
                            chain: SimChain) -> None:
    try:
        await asyncio.sleep(node.rtt_s)  # the handshake's round trip
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await reader.readexactly(length)
            if node.fault == "frozen":
                await asyncio.sleep(3600)
            request = json.loads(body)
            now = time.time()
            reply = ([answer(node, chain, c, now) for c in request] if isinstance(request, list)
                     else answer(node, chain, request, now))
            payload = json.dumps(reply).encode()
            await asyncio.sleep(node.rtt_s)  # the request's round trip
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                         + str(len(payload)).encode() + b"\r\n\r\n" + payload)
            await writer.drain()
            if b"connection: close" in head.lower():
                break
    except (asyncio.IncompleteReadError, ConnectionError, ValueError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def serve(spec: Spec, part: int, parts: int) -> None:
    mine = [n for i, n in enumerate([*spec.nodes, *spec.references]) if i % parts == part and n.fault != "down"]
    servers = []
    for node in mine:
        chain = spec.chains[node.chain]
        servers.append(await asyncio.start_server(
            lambda r, w, n=node, c=chain: _serve_connection(r, w, n, c), "127.0.0.1", node.port, backlog=256))
    print(f"ready {len(servers)}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m lab.simfleet")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--spec", required=True)
    parser.add_argument("--part", type=int, default=0)
    parser.add_argument("--parts", type=int, default=1)
    args = parser.parse_args()
    spec = Spec.from_json(open(args.spec).read())
    try:
        asyncio.run(serve(spec, args.part, args.parts))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
