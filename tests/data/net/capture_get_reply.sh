#!/bin/bash
# Captures wireguard_go_get_reply.txt: the raw reply of wireguard-go's UAPI to "get=1" for an
# interface configured (with wg(8), independently of Keywarden) with the RFC 7748 §6.1 keys:
# Alice's private key on kwcapa, Bob's public key as its peer, after a ping across the tunnel.
# Run as root from a scratch directory holding alice.key, bob.key, psk.key (see README.md).
set -eu
A=kwcapA; B=kwcapB
cleanup() {
  kill "$PA" "$PB" 2>/dev/null || true; sleep 0.3
  ip netns del $A 2>/dev/null || true; ip netns del $B 2>/dev/null || true
}
trap cleanup EXIT
ip netns add $A; ip netns add $B
ip -n $A link add ul0 type veth peer name ul0 netns $B
ip -n $A addr add 192.0.2.1/24 dev ul0; ip -n $B addr add 192.0.2.2/24 dev ul0
ip -n $A link set ul0 up; ip -n $B link set ul0 up
WG_PROCESS_FOREGROUND=1 ip netns exec $A wireguard-go kwcapa & PA=$!
WG_PROCESS_FOREGROUND=1 ip netns exec $B wireguard-go kwcapb & PB=$!
sleep 1
# B first, so that A's first handshake initiation (persistent keepalive) finds B ready.
wg set kwcapb private-key bob.key listen-port 51821 peer "$(wg pubkey < alice.key)" \
  preshared-key psk.key endpoint 192.0.2.1:51820 allowed-ips 10.78.0.1/32,fd78::1/128
wg set kwcapa private-key alice.key listen-port 51820 peer "$(wg pubkey < bob.key)" \
  preshared-key psk.key endpoint 192.0.2.2:51821 persistent-keepalive 25 \
  allowed-ips 10.78.0.2/32,fd78::2/128
ip -n $A addr add 10.78.0.1/24 dev kwcapa; ip -n $A link set kwcapa up
ip -n $B addr add 10.78.0.2/24 dev kwcapb; ip -n $B link set kwcapb up
ip netns exec $A ping -c 2 -W 6 10.78.0.2
python3 -c '
import socket
s = socket.socket(socket.AF_UNIX); s.connect("/var/run/wireguard/kwcapa.sock")
s.sendall(b"get=1\n\n")
data = b""
while not data.endswith(b"\n\n"): data += s.recv(4096)
open("wireguard_go_get_reply.txt", "wb").write(data)'
