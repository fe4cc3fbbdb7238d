"""aiortc / aioice interop cases against a running tern.

Usage:
  aiortc_case.py pc  HOST PORT udp|tcp|tls USERNAME PASSWORD
  aiortc_case.py turn HOST PORT udp|tcp|tls USERNAME PASSWORD PEER_PORT

`tls` is TURN over TLS (`turns:`), verifying tern's certificate for HOST
against the CA file in $SSL_CERT_FILE.

`pc`: two relay-only RTCPeerConnections connect through tern, exchange 1,000
DataChannel messages (checked intact and in order) and a fake video track
(frames must decode). `turn`: aioice's TURN client allocates, binds a channel
to a loopback echo peer, relays both ways and deletes the allocation.
Prints one line with the outcome; exit 0 on success.
"""

import asyncio
import sys

MESSAGES = 1000
FRAMES = 15


async def peer_connections(host, port, transport, username, password):
    from aiortc import (RTCConfiguration, RTCIceServer, RTCPeerConnection,
                        VideoStreamTrack)
    from aiortc.rtcconfiguration import RTCIceTransportPolicy

    url = (f"turns:{host}:{port}?transport=tcp" if transport == "tls"
           else f"turn:{host}:{port}?transport={transport}")
    config = RTCConfiguration(
        iceServers=[RTCIceServer(urls=url,
                                 username=username, credential=password)],
        iceTransportPolicy=RTCIceTransportPolicy.RELAY)
    a, b = RTCPeerConnection(config), RTCPeerConnection(config)
    received, done, frames = [], asyncio.Event(), asyncio.Event()
    decoded = 0

    @b.on("datachannel")
    def on_channel(channel):
        @channel.on("message")
        def on_message(msg):
            received.append(msg)
            if len(received) == MESSAGES:
                done.set()

    @b.on("track")
    def on_track(track):
        async def pull():
            nonlocal decoded
            while decoded < FRAMES:
                frame = await track.recv()
                if frame.width > 0:
                    decoded += 1
            frames.set()
        asyncio.ensure_future(pull())

    channel = a.createDataChannel("chat", ordered=True)
    a.addTrack(VideoStreamTrack())
    opened = asyncio.Event()
    channel.on("open", opened.set)
    await a.setLocalDescription(await a.createOffer())
    await b.setRemoteDescription(a.localDescription)
    await b.setLocalDescription(await b.createAnswer())
    await a.setRemoteDescription(b.localDescription)
    try:
        await asyncio.wait_for(opened.wait(), 30)
        for i in range(MESSAGES):
            channel.send(f"message {i:04d}")
        await asyncio.wait_for(done.wait(), 30)
        await asyncio.wait_for(frames.wait(), 30)
        expected = [f"message {i:04d}" for i in range(MESSAGES)]
        if received != expected:
            return f"DataChannel messages differ (got {len(received)})"
        conn = a.sctp.transport.transport._connection
        types = {(p.local_candidate.type, p.remote_candidate.type)
                 for p in conn._nominated.values()}
        if types != {("relay", "relay")}:
            return f"selected pair is not relay/relay: {types}"
        return None
    except asyncio.TimeoutError:
        return (f"timed out: {len(received)}/{MESSAGES} messages, "
                f"{decoded}/{FRAMES} frames, ICE {a.iceConnectionState}")
    finally:
        await a.close()
        await b.close()


async def turn_client(host, port, transport, username, password, peer_port):
    from aioice import turn

    class Collect(asyncio.DatagramProtocol):
        def __init__(self):
            self.queue = asyncio.Queue()

        def datagram_received(self, data, addr):
            self.queue.put_nowait((data, addr))

    ssl_context = None
    if transport == "tls":
        import os
        import ssl
        ssl_context = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
        transport = "tcp"
    relay, proto = await turn.create_turn_endpoint(
        Collect, server_addr=(host, port), username=username, password=password,
        transport=transport, ssl=ssl_context)
    try:
        peer = ("127.0.0.1", peer_port)
        for i in range(20):
            payload = f"aioice {i}".encode()
            relay.sendto(payload, peer)
            data, addr = await asyncio.wait_for(proto.queue.get(), 10)
            if data != payload or addr[1] != peer_port:
                return f"echo {i} came back wrong: {data!r} from {addr}"
        if not relay._TurnTransport__inner_protocol.channel_to_peer:
            return "no channel was bound"
        return None
    except asyncio.TimeoutError:
        return "timed out waiting for the echo"
    finally:
        relay.close()
        await asyncio.sleep(0.5)  # lets the deleting Refresh (LIFETIME 0) go out


def main():
    mode, host, port, transport, username, password = sys.argv[1:7]
    if mode == "pc":
        error = asyncio.run(peer_connections(host, int(port), transport, username, password))
    else:
        error = asyncio.run(turn_client(host, int(port), transport, username, password,
                                        int(sys.argv[7])))
    print(error or "ok")
    sys.exit(1 if error else 0)


if __name__ == "__main__":
    main()
