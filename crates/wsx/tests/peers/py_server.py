"""Python `websockets` echo server for the wsx interop tests.

usage: py_server.py MODE [CERT KEY]
MODE: plain | deflate | deflate-nct (server and client no context takeover)
Prints `listening PORT`, then one line per event: `accepted SUBPROTOCOL EXTENSIONS`,
`closed CODE REASON`. Text `close CODE REASON` makes it close with that code.
"""
import asyncio
import json
import ssl
import sys

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory


def say(*parts):
    print(*parts, flush=True)


async def handler(ws):
    exts = [f"{type(e).__name__}(local_nct={e.local_no_context_takeover},remote_nct={e.remote_no_context_takeover})"
            for e in ws.protocol.extensions]
    say("accepted", ws.subprotocol, json.dumps(exts))
    try:
        async for msg in ws:
            if isinstance(msg, str) and msg.startswith("close "):
                code, _, reason = msg[6:].partition(" ")
                await ws.close(int(code), reason)
                break
            await ws.send(msg)
    except ConnectionClosed:
        pass
    finally:
        await ws.wait_closed()
        rcvd = ws.protocol.close_rcvd
        say("closed", rcvd.code if rcvd else "none", rcvd.reason if rcvd else "")


async def main():
    mode = sys.argv[1]
    extensions = None
    compression = None
    if mode == "deflate":
        compression = "deflate"
    elif mode == "deflate-nct":
        extensions = [ServerPerMessageDeflateFactory(
            server_no_context_takeover=True, client_no_context_takeover=True, require_client_max_window_bits=False)]
    ctx = None
    if len(sys.argv) > 3:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(sys.argv[2], sys.argv[3])
    kwargs = dict(subprotocols=["superchat", "chat"], max_size=64 << 20, ssl=ctx, compression=compression)
    if extensions is not None:
        kwargs["extensions"] = extensions
        kwargs.pop("compression")
    async with serve(handler, "127.0.0.1", 0, **kwargs) as server:
        port = server.sockets[0].getsockname()[1]
        say("listening", port)
        await asyncio.get_running_loop().create_future()


asyncio.run(main())
