"""Node probes: what an operator sees when a node is fine, frozen, stalled or behind.

Three layers:
- the client-answer parsers, against response samples taken from the clients'
  own code and docs (tests/fixtures/health/README.md says where each came from),
  and against garbage (Hypothesis): they never raise;
- classification, as a decision table;
- probe_many against real anvil nodes (started here on free ports, each with
  its own HOME, stopped by PID) and against a small local HTTP server that
  misbehaves on purpose.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]

from inventory import Chain, ChainFamily, Client  # noqa: E402
from tasks.probes import evm, heimdall, op_node, solana  # noqa: E402
from tasks.probes import (  # noqa: E402
    ClientHealth,
    ClientVersion,
    HealthOptions,
    NodeProbe,
    ProbeError,
    ProbeTarget,
    Timeouts,
    classify,
    parse_avalanche_health,
    parse_avalanche_is_bootstrapped,
    parse_client_version,
    parse_erigon_health,
    parse_heimdall_status,
    parse_op_node_sync_status,
    parse_solana_get_health,
    parse_solana_health,
    probe_many,
    probe_many_sync,
    reference_head,
)
from tasks.probes.parsing import ERROR_MAX_CHARS  # noqa: E402
from tests.processes import rpc

FIXTURES = Path(__file__).parent / "fixtures" / "health"


def sample(name: str) -> tuple[int, bytes]:
    """(status, body) of a fixture named <case>.<status>.<ext>."""
    (path,) = FIXTURES.glob(f"{name}.*")
    return int(path.name.split(".")[-2]), path.read_bytes()


def chain(**overrides) -> Chain:
    values = dict(family=ChainFamily.ethereum, references=["http://127.0.0.1:1"], max_lag_blocks=8,
                  max_head_age_seconds=30.0)
    return Chain(**(values | overrides))


# ---------------------------------------------------------------------------
# Parsers against real response shapes
# ---------------------------------------------------------------------------

class TestErigonHealth:
    def test_all_requested_checks_pass(self):
        h = parse_erigon_health(*sample("erigon_ok"))
        assert h.healthy is True
        assert h.data["checks"]["check_block"] == "DISABLED"
        assert "synced" in h.detail and "max_seconds_behind" in h.detail

    def test_body_query_form(self):
        assert parse_erigon_health(*sample("erigon_body_query")).healthy is True

    def test_not_synced_names_every_failing_check(self):
        h = parse_erigon_health(*sample("erigon_not_synced"))
        assert h.healthy is False
        assert "synced: not synced" in h.detail
        assert "not enough peers: 0" in h.detail
        assert "timestamp too old" in h.detail

    def test_a_malformed_check_request_is_inconclusive_not_a_node_failure(self):
        h = parse_erigon_health(*sample("erigon_bad_header"))
        assert h.healthy is None
        assert "strconv.Atoi" in h.detail

    def test_older_plain_text_answers(self):
        assert parse_erigon_health(*sample("erigon_legacy_healthy")).healthy is True
        h = parse_erigon_health(*sample("erigon_legacy_not_synced"))
        assert h.healthy is False and "not synced" in h.detail

    def test_something_else_on_that_path(self):
        h = parse_erigon_health(404, b"404 page not found\n")
        assert h.healthy is None and "HTTP 404" in h.detail
        nethermind_style = b'{"status":"Healthy","totalDuration":"00:00:00.0012"}'
        assert parse_erigon_health(200, nethermind_style).healthy is None


class TestOpNodeSyncStatus:
    NOW = 1719850265 + 2  # two seconds after the sample's unsafe head

    def test_healthy_gap_and_fresh_unsafe_head(self):
        h = parse_op_node_sync_status(*sample("op_node_sync_status"), now=self.NOW)
        assert h.healthy is True
        assert h.data["unsafe_l2"] == {"number": 122052000, "timestamp": 1719850265}
        assert h.data["safe_l2"]["number"] == 122051850
        assert h.data["finalized_l2"]["number"] == 122051200
        assert h.data["unsafe_safe_gap"] == 150
        assert h.data["unsafe_age_s"] == 2
        assert h.data["l1_derivation_lag"] == 4

    def test_gap_beyond_the_configured_maximum(self):
        h = parse_op_node_sync_status(*sample("op_node_sync_status"), now=self.NOW, max_unsafe_safe_gap=100)
        assert h.healthy is False and "safe head 150 blocks behind unsafe (max 100)" in h.detail

    def test_stale_unsafe_head(self):
        h = parse_op_node_sync_status(*sample("op_node_sync_status"), now=self.NOW + 600, max_unsafe_age_s=60)
        assert h.healthy is False and "unsafe head 602s old" in h.detail

    def test_zeroed_status_is_not_yet_initialized(self):
        h = parse_op_node_sync_status(*sample("op_node_sync_status_zeroed"), now=self.NOW)
        assert h.healthy is None and "not initialized" in h.detail

    def test_rpc_error(self):
        body = b'{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"the method optimism_syncStatus does not exist/is not available"}}'
        h = parse_op_node_sync_status(200, body)
        assert h.healthy is None and "-32601" in h.detail


class TestHeimdallStatus:
    def test_synced_node(self):
        h = parse_heimdall_status(*sample("cometbft_status_synced"))
        assert h.healthy is True
        assert h.data["latest_block_height"] == 26083
        assert h.data["catching_up"] is False
        assert h.data["latest_block_unix"] == 1718114877  # 2024-06-11T14:07:57Z

    def test_catching_up_is_not_to_be_trusted(self):
        h = parse_heimdall_status(*sample("heimdall_status_catching_up"))
        assert h.healthy is False
        assert "catching up" in h.detail and h.data["latest_block_height"] == 16804312
        assert h.data["network"] == "heimdall-137"

    def test_without_the_jsonrpc_envelope(self):
        _, body = sample("cometbft_status_synced")
        inner = json.dumps(json.loads(body)["result"]).encode()
        assert parse_heimdall_status(200, inner).healthy is True


class TestSolanaHealth:
    @pytest.mark.parametrize("case, healthy", [("ok", True), ("behind", False), ("unknown", None)])
    def test_get_health_endpoint(self, case, healthy):
        assert parse_solana_health(*sample(f"solana_health_{case}")).healthy is healthy

    def test_transaction_status_behind(self):
        assert parse_solana_health(200, b"transaction status behind").healthy is False

    def test_get_health_rpc_ok(self):
        assert parse_solana_get_health(*sample("solana_gethealth_ok")).healthy is True

    def test_get_health_rpc_behind_reports_the_distance(self):
        h = parse_solana_get_health(*sample("solana_gethealth_behind"))
        assert h.healthy is False and h.data["numSlotsBehind"] == 42 and "42 slots" in h.detail

    def test_get_health_rpc_unknown_distance(self):
        h = parse_solana_get_health(*sample("solana_gethealth_unknown"))
        assert h.healthy is None and h.data["numSlotsBehind"] is None

    def test_distance_only_in_the_message(self):
        body = b'{"jsonrpc":"2.0","error":{"code":-32005,"message":"Node is behind by 7 slots"},"id":1}'
        assert parse_solana_get_health(200, body).data["numSlotsBehind"] == 7

    def test_solana_batch_gives_slot_version_and_health(self):
        fields = solana.interpret(200, sample("solana_batch_behind")[1], time.time(), HealthOptions())
        assert fields["head"] == 287512033
        assert fields["client_version"] == "solana-core/1.18.22"
        assert fields["health"].healthy is False and fields["health"].data["numSlotsBehind"] == 160


class TestAvalancheHealth:
    def test_healthy_get_answer(self):
        h = parse_avalanche_health(*sample("avalanche_health_ok"))
        assert h.healthy is True and "bootstrapped" in h.data["checks"]

    def test_healthy_jsonrpc_answer(self):
        assert parse_avalanche_health(*sample("avalanche_health_rpc_ok")).healthy is True

    def test_unhealthy_names_the_failing_check(self):
        h = parse_avalanche_health(*sample("avalanche_health_unhealthy"))
        assert h.healthy is False
        assert h.data["failing"] == {"bootstrapped": "subnets not bootstrapped"}
        assert "bootstrapped: subnets not bootstrapped" in h.detail

    def test_503_without_healthy_false_is_still_unhealthy(self):
        _, body = sample("avalanche_health_ok")
        assert parse_avalanche_health(503, body).healthy is False

    @pytest.mark.parametrize("case, healthy", [("true", True), ("false", False)])
    def test_is_bootstrapped(self, case, healthy):
        assert parse_avalanche_is_bootstrapped(*sample(f"avalanche_is_bootstrapped_{case}")).healthy is healthy


class TestEvmBatch:
    def test_anvil_answer_without_net_peercount(self):
        fields = evm.interpret(200, sample("anvil_batch")[1], time.time(), HealthOptions())
        assert fields["head"] == 0
        assert fields["peers"] is None  # -32601 Method not found: a missing field, not a failure
        assert fields["syncing"] is False
        assert fields["client_version"] == "anvil/v1.7.1"

    def test_geth_syncing_progress(self):
        fields = evm.interpret(200, sample("geth_syncing_batch")[1], 0x66CF1A2B + 5.5, HealthOptions())
        assert fields["head"] == 0x1407C20
        assert fields["peers"] == 25
        assert fields["syncing"]["highestBlock"] == "0x140bf30"
        assert fields["head_age_s"] == 5.5

    def test_head_age_is_clamped_at_zero(self):
        fields = evm.interpret(200, sample("geth_syncing_batch")[1], 0x66CF1A2B - 100, HealthOptions())
        assert fields["head_age_s"] == 0.0

    def test_batch_too_large_fails_the_head(self):
        result = evm.interpret(200, sample("geth_batch_too_large")[1], time.time(), HealthOptions())
        assert result == "eth_getBlockByNumber failed: -32600 batch too large"

    @pytest.mark.parametrize("body, error", [
        (b"<html>bad gateway</html>", "malformed JSON"),
        (b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"batch not supported"}}', "batch refused: -32600 batch not supported"),
        (b'"hello"', "not a JSON-RPC batch answer"),
        (b'[{"jsonrpc":"2.0","id":1,"result":null}]', "eth_getBlockByNumber gave no latest block"),
        (b"[]", "eth_getBlockByNumber failed: no answer in batch"),
    ])
    def test_unusable_answers(self, body, error):
        assert evm.interpret(200, body, time.time(), HealthOptions()).startswith(error)

    def test_answers_in_any_order_and_string_ids(self):
        doc = json.loads(sample("anvil_batch")[1])
        for item in doc:
            item["id"] = str(item["id"])
        fields = evm.interpret(200, json.dumps(doc[::-1]).encode(), time.time(), HealthOptions())
        assert fields["head"] == 0 and fields["client_version"] == "anvil/v1.7.1"


# Every string below is one a client returned or its project publishes; the
# comment says where it was found. "shape:" marks a string built from the
# client's own formatting code where no published answer was found.
@pytest.mark.parametrize("raw, expected", [
    # --- Erigon: "erigon/<version>/<os-arch>/<go>", no "v" in 3.x, a "v" in some 2.x
    ("erigon/3.0.4/linux-amd64/go1.23.1", ("erigon", "3.0.4")),  # the brief; same shape as the published 3.0.14 below
    ("erigon/3.0.14/linux-amd64/go1.23.11", ("erigon", "3.0.14")),  # a Go client-version parser's table of real answers (find_string "erigon/3.0.14")
    ("erigon/3.01.0/darwin-arm64/go1.23.4", ("erigon", "3.01.0")),  # coincashew/EthPillar#63 (a 3.01.0-dev build's answer)
    ("erigon/2.60.7/linux-amd64/go1.21.5", ("erigon", "2.60.7")),  # a gnosis node's log, "connected to blockchain backend"
    ("erigon/2.48.1/linux-amd64/go1.20.6", ("erigon", "2.48.1")),  # a node guide's curl web3_clientVersion answer
    ("erigon/2.54.0/linux-amd64/go1.20.5", ("erigon", "2.54.0")),  # `cast client --rpc-url https://rpc.ankr.com/eth_sepolia` in a Foundry tutorial
    ("erigon/v2.60.10/linux-amd64/go1.21.5", ("erigon", "2.60.10")),  # the brief's shape; "v" form as in the next two
    ("erigon/v2.40.0/linux-amd64/go1.20", ("erigon", "2.40.0")),  # erpc's client-version validator test (an upstream's answer)
    ("erigon/v2.53.4-c4843268/linux-arm64/go1.20.8", ("erigon", "2.53.4")),  # an admin_peers answer (peer name = its clientVersion)
    ("erigon/v2.59.2-a013ec25/linux-amd64/go1.21.5", ("erigon", "2.59.2")),  # a devp2p HelloMessage client_version in a crawler's log
    ("erigon/3.0.0-alpha4/linux-amd64/go1.22.0", ("erigon", "3.0.0-alpha4")),  # shape: Erigon 3 alpha tags (v3.0.0-alpha4)
    ("erigon/2022.99.99/linux-amd64/go1.18.3", ("erigon", "2022.99.99")),  # CalVer era dev build: Aurora's test table, "https://rpc.ankr.com/eth_ropsten"
    ("erigon/2022.04.2/linux-amd64/go1.17.9", ("erigon", "2022.04.2")),  # CalVer era: a node-benchmark script's real node_versions
    ("erigon/2022.01.3/linux-amd64/go1.17.6", ("erigon", "2022.01.3")),  # CalVer era: an RPC provider's web3_clientVersion docs
    ("erigon/2022.99.99-dev-abc1234/linux-amd64/go1.18.3", ("erigon", "2022.99.99-dev")),  # shape: CalVer dev build with its commit
    # --- Geth: "Geth[/<identity>]/v<version>-<meta>[-<commit8>[-<date>]]/<os-arch>/<go>"
    # (go-ethereum node/config.go NodeName; version.WithCommit adds the date when meta is not "stable")
    ("Geth/v1.14.8-stable-a9523b64/linux-amd64/go1.22.6", ("geth", "1.14.8")),  # the brief; same shape as the next two
    ("Geth/v1.16.4-stable-41714b49/linux-amd64/go1.24.7", ("geth", "1.16.4")),  # a Go client-version parser's "real-world examples"
    ("Geth/v1.13.0-stable-64fe2a41/linux-amd64/go1.21.0", ("geth", "1.13.0")),  # a client-version sanitiser's test table
    ("Geth/v1.10.26-stable/linux-amd64/go1.18.5", ("geth", "1.10.26")),  # an RPC fingerprinter's real-world examples (no commit: a build without git info)
    ("Geth/v1.10.23-omnibus-b38477ec/linux-amd64/go1.18.5", ("geth", "1.10.23")),  # Infura goerli, Aurora's test table ("omnibus": Infura's meta)
    ("Geth/v1.11.6-omnibus-f83e1598/linux-amd64/go1.20.3", ("geth", "1.11.6")),  # Infura's docs, quoted in Digine-Labs/rosettanet#168
    ("Geth/mynode/v1.10.26-stable/linux-amd64/go1.18.5", ("geth", "1.10.26")),  # shape: --identity mynode, NodeName puts it before the version
    ("Geth/v1.14.9-unstable-abcdef12-20240901/linux-amd64/go1.22.6", ("geth", "1.14.9-unstable")),  # shape: a non-release build (version.WithCommit)
    # --- op-geth: it reports "Geth" (op-geth node/config.go keeps the title-cased name), version 1.MMmmpp
    ("Geth/v1.101315.3-stable-8af19cf2/linux-amd64/go1.22.6", ("op-geth", "1.101315.3")),  # an OP-stack L3's web3_clientVersion (rpc-testnet-base.worldmobile.net)
    ("Geth/v1.101315.0-stable-ef178f25/linux-amd64/go1.21.10", ("op-geth", "1.101315.0")),  # an op-geth start-up log, "Starting peer-to-peer node instance=..."
    ("Geth/v1.101411.8-rc.1-374d61f9-20250211/linux-amd64/go1.23.6", ("op-geth", "1.101411.8-rc.1")),  # an op-geth admin_nodeInfo name in a Rust client's test
    ("op-geth/v1.101308.2/linux-amd64/go1.21", ("op-geth", "1.101308.2")),  # GetBlock's Optimism web3_clientVersion docs (a renamed build)
    # --- Nethermind: "Nethermind/v<version>+<commit8>/<os-arch>/dotnet<ver>"; before 1.14, git-describe form
    ("Nethermind/v1.25.4+2bf8a789/linux-x64/dotnet8.0.8", ("nethermind", "1.25.4")),  # the brief; shape of the next ones
    ("Nethermind/v1.18.2+22c00906/linux-x64/dotnet7.0.5", ("nethermind", "1.18.2")),  # GetBlock's Gnosis web3_clientVersion docs
    ("Nethermind/v1.32.4+1c4c7c0a/linux-x64/dotnet9.0.7", ("nethermind", "1.32.4")),  # a Go client-version parser's real-world examples
    ("Nethermind/v1.10.75-0-310037468-20210717/X64-Linux/5.0.7", ("nethermind", "1.10.75")),  # Nethermind's own IWeb3RpcModule ExampleResponse
    ("Nethermind/v1.13.0-0-2e8910b5b-20220520/X64-Linux/6.0.4", ("nethermind", "1.13.0")),  # a sentry's log line, clientID of a peer
    # --- Besu: "besu[/<identity>]/v<version>/<os-arch>/<vm>" (hyperledger/besu BesuInfo.version and nodeName)
    ("besu/v24.1.2/linux-x86_64/openjdk-java-17", ("besu", "24.1.2")),  # the brief; shape of BesuInfo.version()
    ("besu/v25.7.0/linux-x86_64/openjdk-java-21", ("besu", "25.7.0")),  # a Go client-version parser's real-world examples
    ("besu/v23.1.1-dev-ac23d311/osx-x86_64/graalvm-java-17", ("besu", "23.1.1-dev")),  # BesuInfo.version() javadoc
    ("besu/v23.1.0/osx-aarch_64/corretto-java-19", ("besu", "23.1.0")),  # BesuInfo.version() javadoc
    ("besu/myid/v23.10.0/linux-x86_64/openjdk-java-17", ("besu", "23.10.0")),  # shape: BesuInfo.nodeName(identity) puts it before the version
    # --- Reth: "reth/v<version>[-<commit>][/<target>]" (RETH_CLIENT_VERSION is "reth/v" + the crate version)
    ("reth/v1.0.0-a2b3c4d/x86_64-unknown-linux-gnu", ("reth", "1.0.0")),  # the brief; shape of the next two
    ("reth/v1.8.2-9c30bf7/x86_64-unknown-linux-gnu", ("reth", "1.8.2")),  # a Go client-version parser's real-world examples
    ("reth/v1.0.4-e24e4c77/x86_64-unknown-linux-gnu", ("reth", "1.0.4")),  # a devp2p HelloMessage client_id in a crawler's log
    ("reth/v0.0.1/x86_64-unknown-linux-gnu", ("reth", "0.0.1")),  # reth book, web3 namespace, web3_clientVersion example
    ("reth/v0.1.0-alpha.13", ("reth", "0.1.0-alpha.13")),  # an execution-client parser's alpha example
    # --- Nitro: "nitro/v<version>-<commit7>/<os-arch>/<go>"; "vv" until OffchainLabs/nitro#1942
    ("nitro/v3.1.0-7d1d84c/linux-amd64/go1.21.10", ("nitro", "3.1.0")),  # the brief; shape of the next
    ("nitro/v3.6.7-a7c9f1e/linux-amd64/go1.23.1", ("nitro", "3.6.7")),  # a chain-recon guide's web3_clientVersion "Returns:"
    ("nitro/v3.10.1-rc.2-d7f07be/linux-amd64/go1.25.10", ("nitro", "3.10.1-rc.2")),  # shape: a release candidate tag v3.10.1-rc.2
    ("nitro/vv2.1.1-e9d8842/linux-arm64/go1.20.8", ("nitro", "2.1.1")),  # OffchainLabs/nitro#1935, arb1.arbitrum.io/rpc
    ("nitro/vv2.0.10-73224e3/linux-amd64/go1.19.5", ("nitro", "2.0.10")),  # the same double-v era
    ("arb-rpc-node/v0.8.0", ("arb-rpc-node", "0.8.0")),  # classic Arbitrum, OffchainLabs/nitro#1063 (before Nitro reported itself)
    # --- Bor: "bor/v<version>[-stable-<commit8>]/<os-arch>/<go>"
    ("bor/v1.3.7/linux-amd64/go1.22.1", ("bor", "1.3.7")),  # the brief (not found published; same shape as those below)
    ("bor/v0.2.14-stable-10c4e89f/linux-amd64/go1.17.3", ("bor", "0.2.14")),  # Ankr's Polygon docs, rpc.ankr.com/polygon
    ("bor/v0.2.14-stable-9edb2836/linux-amd64/go1.17.7", ("bor", "0.2.14")),  # a devp2p crawler's client-name list
    ("Bor/v0.4.0/linux-amd64/go1.19.10", ("bor", "0.4.0")),  # emerald dshackle's upstream detection test
    ("bor/v1.0.1-stable-53491784/linux-amd64/go1.18", ("bor", "1.0.1")),  # chain.com docs, BitTorrent Chain (a Bor fork)
    # --- anvil: "anvil/v<version>" (foundry's CLIENT_VERSION is "anvil/v" + the crate version)
    ("anvil/v1.7.1", ("anvil", "1.7.1")),  # the lab's anvil (test_a_healthy_node asks a real one)
    ("anvil/v0.3.0", ("anvil", "0.3.0")),  # viem's test snapshots of a real anvil's answer
    ("anvil/v0.2.0", ("anvil", "0.2.0")),  # viem's test snapshots (foundry nightlies said 0.2.0 for years)
    ("anvil/v0.1.0", ("anvil", "0.1.0")),  # viem's older test snapshots
    # --- other probe kinds, as interpret() builds them
    ("op-node/v1.9.1", ("op-node", "1.9.1")),  # op_node.interpret: "op-node/" + optimism_version
    ("solana-core/1.18.22", ("solana-core", "1.18.22")),  # solana.interpret: "solana-core/" + getVersion's solana-core
])
def test_client_version(raw, expected):
    assert parse_client_version(raw) == ClientVersion(*expected)


@pytest.mark.parametrize("raw, declared, expected", [
    # Bor run as a geth binary answers "Geth"; only the inventory can say it is Bor.
    ("Geth/v0.2.16-stable-abcdef12/linux-amd64/go1.17", "bor", ("bor", "0.2.16")),
    ("Geth/v1.101411.4-stable-efa05b1b/linux-amd64/go1.22.7", "op-geth", ("op-geth", "1.101411.4")),
    ("Geth/v1.14.8-stable-a9523b64/linux-amd64/go1.22.6", "geth", ("geth", "1.14.8")),
    ("Geth/v1.14.8-stable-a9523b64/linux-amd64/go1.22.6", None, ("geth", "1.14.8")),  # a reference: what it says
    ("erigon/3.0.4/linux-amd64/go1.23.1", "bor", ("erigon", "3.0.4")),  # only a Geth answer is reinterpreted
])
def test_a_geth_fork_answering_geth_is_reported_as_the_declared_client(raw, declared, expected):
    assert parse_client_version(raw, declared=declared) == ClientVersion(*expected)


@pytest.mark.parametrize("raw", [None, "", "geth", "Geth/", "/v1.2.3", "Geth/stable", 42, "a" * 600,
                                 "Geth/mynode/linux-amd64/go1.22", "anvil 0.1.0 (fdd321b 2023-10-04)"])
def test_client_version_not_a_version(raw):
    assert parse_client_version(raw) is None


def test_version_key_orders_pre_releases_before_their_release():
    from tasks.probes.evm import version_key

    ordered = ["2.60.10", "3.0.0-alpha4", "3.0.0-beta1", "3.0.0-rc.1", "3.0.0-rc.2", "3.0.0-rc.10", "3.0.0", "3.0.1",
               "3.01.2", "3.10.1-rc.2", "3.10.1"]
    assert sorted(reversed(ordered), key=version_key) == ordered
    assert version_key("1.14") == version_key("1.14.0")
    assert version_key("1.101411.4") > version_key("1.101315.3")


# ---------------------------------------------------------------------------
# Parsers never raise on garbage
# ---------------------------------------------------------------------------

KEYS = ["result", "error", "code", "message", "data", "id", "jsonrpc", "numSlotsBehind", "sync_info",
        "catching_up", "latest_block_height", "latest_block_time", "node_info", "unsafe_l2", "safe_l2",
        "finalized_l2", "current_l1", "head_l1", "number", "timestamp", "checks", "healthy", "isBootstrapped",
        "synced", "min_peer_count", "currentBlock", "highestBlock", "solana-core"]
SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
           | st.sampled_from(["0x", "0x1f", "0xzz", "HEALTHY", "ERROR: x", "ok", "behind", "2024-06-11T14:07:57Z", "-1", "9" * 30]))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=5), max_leaves=25)
BATCH_ITEM = st.fixed_dictionaries({"id": st.integers(0, 5) | st.sampled_from(["1", "2", True]), "result": JSON},
                                   optional={"error": JSON, "jsonrpc": st.just("2.0")})
BODIES = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(str.encode),
    JSON.map(lambda v: json.dumps(v).encode()),
    st.lists(BATCH_ITEM, max_size=5).map(lambda v: json.dumps(v).encode()),
    st.integers(1, 3000).map(lambda n: b"[" * n),  # deep nesting
)
STATUS = st.integers(min_value=0, max_value=999)
PARSERS = [parse_erigon_health, parse_heimdall_status, parse_solana_health, parse_solana_get_health,
           parse_avalanche_health, parse_avalanche_is_bootstrapped, parse_op_node_sync_status]
INTERPRETERS = [evm.interpret, solana.interpret, op_node.interpret, heimdall.interpret]

garbage_settings = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@garbage_settings
@given(status=STATUS, body=BODIES, which=st.sampled_from(PARSERS))
def test_health_parsers_never_raise(status, body, which):
    health = which(status, body)
    assert isinstance(health, ClientHealth)
    assert health.healthy in (True, False, None)


@garbage_settings
@given(body=BODIES, which=st.sampled_from(INTERPRETERS), now=st.floats(0, 2e9))
def test_head_interpreters_never_raise(body, which, now):
    result = which(200, body, now, HealthOptions())
    assert isinstance(result, (str, dict))
    if isinstance(result, dict):
        assert isinstance(result["head"], int)
        assert result["head_age_s"] is None or result["head_age_s"] >= 0


@garbage_settings
@given(raw=st.one_of(st.text(max_size=80), JSON))
def test_client_version_parser_never_raises(raw):
    parsed = parse_client_version(raw)
    assert parsed is None or (parsed.client and parsed.version[0].isdigit())
    if parsed is not None:
        from tasks.probes.evm import version_key
        version_key(parsed.version)  # every parsed version has a key


# ---------------------------------------------------------------------------
# Classification: the decision table
# ---------------------------------------------------------------------------

def probe(**fields) -> NodeProbe:
    values = dict(name="n", url="http://n", ok=True, head=100, head_timestamp=1, head_age_s=2.0,
                  syncing=False, peers=None, client_version="anvil/v1.7.1", latency_s=0.01)
    return NodeProbe(**(values | fields))


UNHEALTHY = ClientHealth(healthy=False, detail="synced: not synced")
INCONCLUSIVE = ClientHealth(healthy=None, detail="health endpoint unreachable: connection refused")


@pytest.mark.parametrize("case, node, ref, status, reason_has, lag", [
    ("no answer", probe(ok=False, error="connection refused", head=None, head_age_s=None), 100, "down", "connection refused", None),
    ("head too old", probe(head_age_s=31.0), 100, "stalled", "31s old", 0),
    ("stale even without references", probe(head_age_s=99.0), None, "stalled", "99s old", None),
    ("node says syncing", probe(syncing={"currentBlock": "0x10", "highestBlock": "0x20"}), 100, "lagging", "block 16 of 32", 0),
    ("too far behind", probe(head=91), 100, "lagging", "9 blocks behind", 9),
    ("at the limit", probe(head=92), 100, "healthy", "head 92", 8),
    ("ahead of references", probe(head=105), 100, "healthy", "head 105", -5),
    ("client health says no", probe(health=UNHEALTHY), 100, "lagging", "not synced", 0),
    ("client health says no, no reference", probe(health=UNHEALTHY), None, "lagging", "not synced", None),
    ("no reference answered", probe(), None, "unknown", "no reference answered", None),
    ("client health inconclusive", probe(health=INCONCLUSIVE), 100, "unknown", "inconclusive", 0),
    ("all good", probe(health=ClientHealth(healthy=True, detail="passed: synced")), 100, "healthy", "head 100", 0),
    ("no timestamp (solana)", probe(head_timestamp=None, head_age_s=None), 100, "healthy", "head 100", 0),
])
def test_classify(case, node, ref, status, reason_has, lag):
    verdict = classify(node, ref, chain())
    assert (verdict.status, verdict.lag) == (status, lag), verdict
    assert reason_has in verdict.reason


def test_reference_head_is_the_best_answering_reference():
    refs = [probe(head=10), probe(head=12), probe(ok=False, head=None, error="timeout"), probe(head=11)]
    assert reference_head(refs) == 12
    assert reference_head([probe(ok=False, head=None, error="x")]) is None
    assert reference_head([]) is None


# ---------------------------------------------------------------------------
# Bad input is refused before anything runs
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("targets, kwargs, message", [
    ([("a", "ftp://x", None, None)], {}, "http(s) URL"),
    ([("a", "not a url", None, None)], {}, "a: url"),
    ([("a", "http://x", "parity", None)], {}, "unknown client 'parity'"),
    ([("a", "http://x", None, "http://")], {}, "health_url"),
    ([("", "http://x", None, None)], {}, "name"),
    (["http://x"], {}, "a probe target is"),
    ([("a", "http://x")], {"concurrency": 0}, "concurrency"),
    ([("a", "http://x")], {"timeout": -1}, "timeout"),
])
def test_bad_input_raises_probe_error(targets, kwargs, message):
    with pytest.raises(ProbeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        probe_many_sync(targets, **kwargs)


def test_bad_erigon_check_is_refused():
    with pytest.raises(ProbeError, match="unknown Erigon health check"):
        HealthOptions(erigon_checks=("synced", "min_peer_count; rm -rf /"))


def test_probe_error_uses_the_project_base_when_there_is_one():
    try:
        from tasks.errors import RunbookError
    except ImportError:
        pytest.skip("tasks/errors.py not there yet")
    assert issubclass(ProbeError, RunbookError)


# ---------------------------------------------------------------------------
# A local HTTP server that answers what each test tells it to
# ---------------------------------------------------------------------------

class StubServer:
    """Serves canned (status, body) per path; records request headers; can drip or hang."""

    def __init__(self):
        self.routes: dict[str, tuple[int, bytes] | str] = {}
        self.requests: list[tuple[str, str, list[tuple[str, str]], bytes]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _serve(self):
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                stub.requests.append((self.command, self.path, list(self.headers.items()), body))
                route = stub.routes.get(self.path.split("?")[0], (404, b"404 page not found\n"))
                if route == "drip":  # one byte every 0.4 s, forever: defeats a per-read timeout
                    self.send_response(200)
                    self.send_header("content-length", "100000")
                    self.end_headers()
                    try:
                        for _ in range(100):
                            self.wfile.write(b"[")
                            self.wfile.flush()
                            time.sleep(0.4)
                    except OSError:
                        pass
                    return
                if route == "huge":
                    self.send_response(200)
                    self.send_header("content-length", str(3 << 20))
                    self.end_headers()
                    try:
                        for _ in range(3 * 16):
                            self.wfile.write(b" " * (64 << 10))
                    except OSError:
                        pass
                    return
                status, payload = route
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _serve

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                if not isinstance(sys.exc_info()[1], OSError):  # clients hanging up is the point here
                    super().handle_error(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub():
    server = StubServer()
    yield server
    server.close()


def anvil_batch_body(head: int = 0) -> bytes:
    doc = json.loads(sample("anvil_batch")[1])
    doc[0]["result"]["number"] = hex(head)
    doc[0]["result"]["timestamp"] = hex(int(time.time()))
    return json.dumps(doc).encode()


@pytest.mark.parametrize("route, error", [
    ((503, b"upstream unavailable"), "HTTP 503: upstream unavailable"),
    ((200, b"<html>not json"), "malformed JSON"),
    ((200, b'{"jsonrpc":"2.0","id":1,"result":"0x10"}'), "not a JSON-RPC batch answer"),
    ("huge", "response larger than"),
])
def test_a_misbehaving_endpoint_is_down_with_a_short_reason(stub, route, error):
    stub.routes["/"] = route
    (p,) = probe_many_sync([("bad", stub.url + "/", None, None)])
    assert not p.ok and p.error.startswith(error), p.error
    assert len(p.error) <= ERROR_MAX_CHARS
    assert classify(p, 100, chain()).status == "down"


def test_a_dripping_endpoint_is_cut_at_the_probe_deadline(stub):
    stub.routes["/"] = "drip"
    timeouts = Timeouts(connect=0.5, read=1.0)
    start = time.monotonic()
    (p,) = probe_many_sync([("drip", stub.url + "/", None, None)], timeout=timeouts)
    elapsed = time.monotonic() - start
    assert not p.ok and "no complete answer within 1.5s" in p.error
    assert elapsed < timeouts.deadline + 0.5


def test_erigon_health_is_asked_with_one_header_per_check(stub):
    stub.routes["/"] = (200, anvil_batch_body(7))
    stub.routes["/health"] = sample("erigon_not_synced")
    options = HealthOptions(erigon_checks=("synced", "min_peer_count3", "max_seconds_behind600"))
    (p,) = probe_many_sync([("erigon-a", stub.url + "/", Client.erigon, stub.url + "/")], health=options)
    assert p.ok and p.head == 7
    assert p.health.healthy is False and "not synced" in p.health.detail
    (health_request,) = [r for r in stub.requests if r[1] == "/health"]
    assert [v for k, v in health_request[2] if k.lower() == "x-erigon-healthcheck"] == list(options.erigon_checks)
    verdict = classify(p, 7, chain())
    assert verdict.status == "lagging" and "not synced" in verdict.reason


def test_bor_is_judged_with_its_heimdall(stub):
    stub.routes["/"] = (200, anvil_batch_body(50))
    stub.routes["/status"] = sample("heimdall_status_catching_up")
    (p,) = probe_many_sync([("bor-a", stub.url + "/", "bor", stub.url + "/")])
    assert p.health.healthy is False and classify(p, 50, chain()).status == "lagging"


def test_op_geth_is_judged_with_its_op_node(stub):
    stub.routes["/"] = (200, anvil_batch_body(5))
    stub.routes["/op-node"] = sample("op_node_sync_status")  # unsafe head from 2024: far too old
    (p,) = probe_many_sync([("base-a", stub.url + "/", Client.op_geth, stub.url + "/op-node")])
    assert p.health.healthy is False and "unsafe head" in p.health.detail


def batch_answering(client_version: str, head: int = 5) -> bytes:
    doc = json.loads(anvil_batch_body(head))
    doc[3]["result"] = client_version
    return json.dumps(doc).encode()


def test_a_probe_records_the_client_and_version_it_parsed(stub):
    stub.routes["/geth"] = (200, batch_answering("Geth/v1.14.8-stable-a9523b64/linux-amd64/go1.22.6"))
    stub.routes["/op-geth"] = (200, batch_answering("Geth/v1.101411.4-stable-efa05b1b/linux-amd64/go1.22.7"))
    stub.routes["/bor"] = (200, batch_answering("Geth/v0.2.16-stable-abcdef12/linux-amd64/go1.17"))
    stub.routes["/junk"] = (200, batch_answering("some proxy"))
    geth, op_geth, bor, junk = probe_many_sync([
        ("eth-a", stub.url + "/geth", Client.geth, None),
        ("base-a", stub.url + "/op-geth", Client.op_geth, None),
        ("matic-a", stub.url + "/bor", Client.bor, None),
        ("odd-a", stub.url + "/junk", Client.geth, None),
    ])
    assert (geth.client, geth.version, geth.client_version) == (
        "geth", "1.14.8", "Geth/v1.14.8-stable-a9523b64/linux-amd64/go1.22.6")
    assert (op_geth.client, op_geth.version) == ("op-geth", "1.101411.4")
    assert (bor.client, bor.version) == ("bor", "0.2.16")  # says Geth; the inventory says Bor
    assert junk.ok and (junk.client, junk.version) == (None, None) and junk.client_version == "some proxy"


def test_a_node_that_does_not_answer_has_no_version(stub):
    stub.routes["/"] = (503, b"upstream unavailable")
    (p,) = probe_many_sync([("eth-a", stub.url + "/", Client.geth, None)])
    assert not p.ok and (p.client, p.version) == (None, None)


def test_avalanche_combines_health_and_is_bootstrapped(stub):
    stub.routes["/ext/bc/C/rpc"] = (200, anvil_batch_body(3))
    stub.routes["/ext/health"] = sample("avalanche_health_ok")
    stub.routes["/ext/info"] = sample("avalanche_is_bootstrapped_false")
    (p,) = probe_many_sync([("avax-a", stub.url + "/ext/bc/C/rpc", "avalanchego", stub.url + "/ext/health")])
    assert p.health.healthy is False and "C-chain not bootstrapped yet" in p.health.detail
    (info_request,) = [r for r in stub.requests if r[1] == "/ext/info"]
    assert json.loads(info_request[3])["params"] == {"chain": "C"}


def test_solana_node_probe(stub):
    stub.routes["/"] = sample("solana_batch_behind")
    (p,) = probe_many_sync([("sol-a", stub.url + "/", "solana", None)])
    assert p.ok and p.head == 287512033 and p.health.healthy is False
    assert classify(p, 287512040, chain(max_lag_blocks=150)).status == "lagging"


def test_an_unreachable_health_endpoint_makes_the_verdict_unknown(stub):
    stub.routes["/"] = (200, anvil_batch_body(9))
    (p,) = probe_many_sync([("erigon-b", stub.url + "/", "erigon", "http://127.0.0.1:1/")])
    assert p.ok and p.health.healthy is None and "connection refused" in p.health.detail
    assert classify(p, 9, chain()).status == "unknown"


def test_health_url_is_ignored_for_clients_without_one(stub):
    stub.routes["/"] = (200, anvil_batch_body(9))
    (p,) = probe_many_sync([("geth-a", stub.url + "/", "geth", stub.url + "/health")])
    assert p.health is None and [r[1] for r in stub.requests] == ["/"]


# ---------------------------------------------------------------------------
# Real anvil nodes
# ---------------------------------------------------------------------------

def judge(nodes: list[tuple[str, str]], refs: list[str], c: Chain, **kwargs):
    targets = [ProbeTarget(n, url, Client.anvil) for n, url in nodes]
    targets += [ProbeTarget(f"ref:{i}", url, "reference") for i, url in enumerate(refs)]
    results = {p.name: p for p in probe_many_sync(targets, **kwargs)}
    ref = reference_head([p for k, p in results.items() if k.startswith("ref:")])
    return {n: (results[n], classify(results[n], ref, c)) for n, _ in nodes}


def test_a_healthy_node(anvils):
    node, ref = anvils(), anvils()
    (p, verdict), = judge([("eth-a", node.url)], [ref.url], chain()).values()
    assert p.ok and p.error is None
    assert p.head == 0 and p.head_age_s is not None and p.head_age_s < 30
    assert p.peers is None  # anvil does not implement net_peerCount: a missing field, not a failure
    assert p.syncing is False
    assert parse_client_version(p.client_version) == ClientVersion("anvil", "1.7.1")
    assert 0 < p.latency_s < 3
    assert verdict.status == "healthy" and verdict.lag == 0


def test_a_killed_node_is_down(anvils):
    node, ref = anvils(), anvils()
    os.kill(node.pid, signal.SIGKILL)
    node.proc.wait(timeout=5)
    (p, verdict), = judge([("eth-a", node.url)], [ref.url], chain()).values()
    assert not p.ok and p.error == "connection refused"
    assert verdict.status == "down" and "connection refused" in verdict.reason


def test_a_node_that_resets_the_connection_mid_request_is_down_and_says_so(anvils):
    ref = anvils()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)

    def reset_every_request():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()  # an RST while the client waits for its answer: the node killed under the request

    threading.Thread(target=reset_every_request, daemon=True).start()
    try:
        (p, verdict), = judge([("eth-a", f"http://127.0.0.1:{server.getsockname()[1]}")], [ref.url], chain()).values()
    finally:
        server.close()
    assert not p.ok and p.error.startswith("connection lost mid-request"), p.error
    assert verdict.status == "down" and "connection lost mid-request" in verdict.reason


def test_a_frozen_node_is_down_within_the_configured_timeout(anvils):
    node, ref = anvils(), anvils()
    os.kill(node.pid, signal.SIGSTOP)  # the kernel still accepts the connection; nobody answers
    timeouts = Timeouts(connect=1.0, read=1.0)
    start = time.monotonic()
    verdicts = judge([("eth-a", node.url)], [ref.url], chain(), timeout=timeouts)
    elapsed = time.monotonic() - start
    (p, verdict), = verdicts.values()
    assert not p.ok and p.error == "read timeout after 1s"
    assert verdict.status == "down"
    assert 1.0 <= p.latency_s < timeouts.deadline + 0.3
    assert elapsed < timeouts.deadline + 1.0


def test_a_stalled_node(anvils):
    node, ref = anvils("--block-time", "1"), anvils("--block-time", "1")
    deadline = time.monotonic() + 10
    while node.head() < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert node.head() >= 2
    rpc(node.url, "evm_setIntervalMining", [0])  # the head stops moving; the node still answers
    frozen_head = node.head()
    time.sleep(3.5)
    (p, verdict), = judge([("eth-a", node.url)], [ref.url], chain(max_head_age_seconds=2.5)).values()
    assert p.ok and p.head == frozen_head and p.head_age_s > 2.5
    assert verdict.status == "stalled", verdict
    assert f"head {frozen_head} is" in verdict.reason


def test_a_lagging_node(anvils):
    node, ref = anvils(), anvils()
    rpc(ref.url, "anvil_mine", [20])
    (p, verdict), = judge([("eth-a", node.url)], [ref.url], chain(max_lag_blocks=8)).values()
    assert p.ok and p.head == 0
    assert verdict.status == "lagging" and verdict.lag == 20
    assert "20 blocks behind" in verdict.reason


def test_without_an_answering_reference_the_verdict_is_unknown(anvils):
    node = anvils()
    (p, verdict), = judge([("eth-a", node.url)], ["http://127.0.0.1:1"], chain()).values()
    assert p.ok and verdict.status == "unknown" and "no reference answered" in verdict.reason


def test_many_targets_share_one_pool_and_keep_their_order(anvils):
    a, b = anvils(), anvils()
    rpc(b.url, "anvil_mine", [3])
    targets = [(f"n{i}", (a, b)[i % 2].url, "anvil", None) for i in range(40)]
    results = probe_many_sync(targets, concurrency=4)
    assert [p.name for p in results] == [t[0] for t in targets]
    assert [p.head for p in results] == [0, 3] * 20


def test_probe_many_sync_works_inside_a_running_event_loop(anvils):
    node = anvils()

    async def inside_a_loop():
        return probe_many_sync([("eth-a", node.url, "anvil", None)])

    (p,) = asyncio.run(inside_a_loop())
    assert p.ok and p.head == 0


def test_probe_many_is_awaitable(anvils):
    node = anvils()
    (p,) = asyncio.run(probe_many([("eth-a", node.url, "anvil", None)], timeout=2.0))
    assert p.ok


def test_references_are_probed_in_their_chains_protocol():
    from tasks.probes.model import GENERIC_EVM
    from tasks.probes.targets import reference_targets, references_of

    eth = chain(references=["http://127.0.0.1:1", "http://127.0.0.1:2"])
    sol = Chain(family=ChainFamily.solana, references=["http://127.0.0.1:3"])
    assert [(t.name, t.client) for t in reference_targets("eth", eth)] == [("ref:eth:0", GENERIC_EVM), ("ref:eth:1", GENERIC_EVM)]
    assert [(t.name, t.client) for t in reference_targets("sol", sol)] == [("ref:sol:0", "solana")]
    # A chain's references are told apart from another chain's whose name starts the same.
    results = [probe(name="ref:eth:0"), probe(name="ref:eth-l2:0"), probe(name="eth-a")]
    assert [p.name for p in references_of(results, "eth")] == ["ref:eth:0"]
