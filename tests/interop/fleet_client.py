"""A TURN client whose flow is moved between the nodes of a fleet, as a
load balancer's rebalancing or a conntrack flush would move it.

From one UDP socket (one 5-tuple) it learns a nonce once, then for each of
ROUNDS rounds: Allocate (with the nonce it holds), CreatePermission for the
peer, a Send indication the echo peer returns as a Data indication; then,
mid-allocation, it runs FLUSH (a command that forgets the load balancer's
connection tracking, so its next datagram is balanced anew) and ends the
allocation with a Refresh of lifetime 0, which now reaches the next node:
437 Allocation Mismatch there (the allocation lives on the node the flow
left) or, when that node still holds the allocation of an earlier round,
its deletion. A 438 Stale Nonce is answered as RFC 8489 says: take the new
nonce and retry. Prints one JSON line: the relay addresses it got (one per
round: they name the node), the 438s it saw, the rounds relayed, and the
437s its moved Refreshes got.

Usage: fleet_client.py SERVER_IP PORT SECRET PEER_IP PEER_PORT ROUNDS FLUSH...
"""
import base64
import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import time

from aioice import stun

server = (sys.argv[1], int(sys.argv[2]))
secret = sys.argv[3].encode()
peer = (sys.argv[4], int(sys.argv[5]))
rounds = int(sys.argv[6])
flush = sys.argv[7:]

username = f"{int(time.time()) + 3600}:fleet"
password = base64.b64encode(hmac.new(secret, username.encode(), hashlib.sha1).digest()).decode()
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(2)
state = {"realm": None, "nonce": None, "stale": 0}


def receive(tid=None):
    """The next message (with transaction id `tid`, if given)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            data = sock.recv(2048)
        except socket.timeout:
            continue
        try:
            msg = stun.parse_message(data)
        except ValueError:
            continue
        if tid is None or msg.transaction_id == tid:
            return msg
    raise TimeoutError("no answer")


def request(method, attrs, accept=()):
    """Send an authenticated request (learning or renewing the nonce as
    the server asks) and return the success response, or the error
    response if its code is in `accept`."""
    for _ in range(4):
        msg = stun.Message(message_method=method, message_class=stun.Class.REQUEST)
        for k, v in attrs.items():
            msg.attributes[k] = v
        if state["nonce"] is not None:
            msg.attributes["USERNAME"] = username
            msg.attributes["REALM"] = state["realm"]
            msg.attributes["NONCE"] = state["nonce"]
            key = hashlib.md5(f"{username}:{state['realm']}:{password}".encode()).digest()
            msg.add_message_integrity(key)
        sock.sendto(bytes(msg), server)
        answer = receive(msg.transaction_id)
        if answer.message_class == stun.Class.RESPONSE:
            return answer
        code = answer.attributes.get("ERROR-CODE", (0, ""))[0]
        if code == 438:
            state["stale"] += 1
        if code in accept:
            return answer
        if code in (401, 438) and "NONCE" in answer.attributes:
            state["realm"] = answer.attributes.get("REALM", state["realm"])
            state["nonce"] = answer.attributes["NONCE"]
            continue
        raise RuntimeError(f"{method.name} failed: {answer.attributes.get('ERROR-CODE')}")
    raise RuntimeError(f"{method.name}: too many challenges")


relays, relayed, mismatched = [], 0, 0
for r in range(rounds):
    ok = request(stun.Method.ALLOCATE, {"REQUESTED-TRANSPORT": 0x11000000})
    relays.append(ok.attributes["XOR-RELAYED-ADDRESS"][0])
    request(stun.Method.CREATE_PERMISSION, {"XOR-PEER-ADDRESS": peer})
    payload = os.urandom(16)
    ind = stun.Message(message_method=stun.Method.SEND, message_class=stun.Class.INDICATION)
    ind.attributes["XOR-PEER-ADDRESS"] = peer
    ind.attributes["DATA"] = payload
    for _ in range(3):
        sock.sendto(bytes(ind), server)
        try:
            got = receive()
        except TimeoutError:
            continue
        if got.message_method == stun.Method.DATA and got.attributes.get("DATA") == payload:
            relayed += 1
            break
    if flush:
        subprocess.run(flush, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = request(stun.Method.REFRESH, {"LIFETIME": 0}, accept=(437,))
    if end.message_class != stun.Class.RESPONSE:
        mismatched += 1
print(json.dumps({"relays": relays, "stale": state["stale"], "relayed": relayed, "mismatched": mismatched}))
