"""One STUN Binding request (aioice's STUN codec) over TCP, or TLS when a CA
file is given, from a chosen source address. Prints
"mapped=IP:PORT own=IP:PORT", or "closed" when the server closed the
connection without answering.

Usage: proxy_binding.py SOURCE_IP HOST PORT [CA_FILE]
"""
import socket
import ssl
import sys

from aioice import stun

src, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
ca = sys.argv[4] if len(sys.argv) > 4 else None
s = socket.create_connection((host, port), timeout=5, source_address=(src, 0))
own = s.getsockname()
try:
    if ca:
        s = ssl.create_default_context(cafile=ca).wrap_socket(s, server_hostname="localhost")
    s.sendall(bytes(stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)))
    data = b""
    while len(data) < 20 or len(data) < 20 + int.from_bytes(data[2:4], "big"):
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
except (OSError, ssl.SSLError):
    print("closed")
    sys.exit(0)
ip, p = stun.parse_message(data).attributes["XOR-MAPPED-ADDRESS"]
print(f"mapped={ip}:{p} own={own[0]}:{own[1]}")
