"""Python `websockets` client for the wsx interop tests: runs every case against a wsx
echo server and exits non-zero on the first failure.

usage: py_client.py URL MODE [CAFILE]
MODE: plain | deflate | deflate-nct
"""
import asyncio
import json
import ssl
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

SIZES = [0, 125, 126, 65535, 65536, 16 << 20]


def check(cond, what):
    if not cond:
        print("FAILED:", what, flush=True)
        sys.exit(1)


async def main():
    url, mode = sys.argv[1], sys.argv[2]
    ctx = None
    if len(sys.argv) > 3:
        ctx = ssl.create_default_context(cafile=sys.argv[3])
    kwargs = dict(subprotocols=["superchat", "chat"], max_size=64 << 20, ssl=ctx)
    if mode == "plain":
        kwargs["compression"] = None
    elif mode == "deflate-nct":
        kwargs["extensions"] = [ClientPerMessageDeflateFactory(
            server_no_context_takeover=True, client_no_context_takeover=True)]
        kwargs["compression"] = None
    async with connect(url, **kwargs) as ws:
        check(ws.subprotocol == "chat", f"subprotocol {ws.subprotocol}")
        exts = ws.protocol.extensions
        if mode == "plain":
            check(exts == [], f"extensions {exts}")
        else:
            check(len(exts) == 1, f"extensions {exts}")
            nct = mode == "deflate-nct"
            check(exts[0].local_no_context_takeover == nct and exts[0].remote_no_context_takeover == nct,
                  f"context takeover {vars(exts[0])}")
        for size in SIZES:
            text = "".join(chr(ord("a") + i % 26) for i in range(size))
            await ws.send(text)
            check(await ws.recv() == text, f"text {size}")
            data = bytes(i % 251 for i in range(size))
            await ws.send(data)
            check(await ws.recv() == data, f"binary {size}")
        # Fragmented, both kinds, both ways.
        await ws.send(iter(["Hel", "lo ", "κόσμε"]))
        check(await ws.recv() == "Hello κόσμε", "fragmented text")
        await ws.send(iter([b"\x00\x01", b"\x02"]))
        check(await ws.recv() == b"\x00\x01\x02", "fragmented binary")
        await ws.send("fragmented")
        check(await ws.recv() == "fragmented κόσμε", "fragmented from the server")
        # Ping from us, pong from wsx; ping from wsx, pong from us (the server sees it).
        pong = await ws.ping(b"py-ping")
        await asyncio.wait_for(pong, 10)
        await ws.send("ping from-wsx")
        # Close started by the server with a code and reason.
        await ws.send("close 4001 bye from server")
        try:
            await asyncio.wait_for(ws.recv(), 10)
            check(False, "expected the server to close")
        except ConnectionClosed as e:
            check(e.rcvd is not None and e.rcvd.code == 4001 and e.rcvd.reason == "bye from server",
                  f"server close {e.rcvd}")
    # Close started by us.
    async with connect(url, **kwargs) as ws:
        await ws.close(4002, "bye from client")
        check(ws.protocol.close_rcvd.code == 4002, f"close echo {ws.protocol.close_rcvd}")
    print("OK", json.dumps({"mode": mode}), flush=True)


asyncio.run(main())
