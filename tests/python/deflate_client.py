"""permessage-deflate against chatd with an independent client: Python `websockets`.

Run by tests/deflate.rs against a server started with WS_COMPRESSION=true and
MAX_MESSAGE_LENGTH=100000. Arguments: the server's ws:// base URL, a room id,
and tokens for three users. Prints one line per check and exits non-zero on
the first failure.
"""

import asyncio
import json
import sys

from websockets.asyncio.client import connect
from websockets.extensions import permessage_deflate
from websockets.frames import Opcode

# Longest wait for any frame: the run fails rather than hangs.
TIMEOUT = 10

# Every data frame the compressed clients' inflaters see, as (rsv1, opcode):
# proves which frames arrived compressed.
SEEN = []
_decode = permessage_deflate.PerMessageDeflate.decode


def _counting_decode(self, frame, *, max_size=None):
    if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
        SEEN.append((frame.rsv1, frame.opcode))
    return _decode(self, frame, max_size=max_size)


permessage_deflate.PerMessageDeflate.decode = _counting_decode


def check(ok, what):
    if not ok:
        print(f"FAIL {what}", flush=True)
        sys.exit(1)
    print(f"ok {what}", flush=True)


async def recv_type(ws, kind):
    """The next frame of type `kind`, skipping others (presence, ...)."""
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        if frame.get("type") == kind:
            return frame


def extensions_header(ws):
    return ws.response.headers.get("Sec-WebSocket-Extensions", "")


async def main(base, room, packed_token, plain_token, nocontext_token):
    url = f"{base}/ws?roomId={room}&token="
    # Default settings: offers "permessage-deflate; client_max_window_bits"
    # and keeps its own compression context between messages.
    packed = await connect(url + packed_token, max_size=None)
    header = extensions_header(packed)
    check(
        header == "permessage-deflate; server_no_context_takeover",
        f"negotiated: {header!r}",
    )
    check(
        [e.name for e in packed.protocol.extensions] == ["permessage-deflate"],
        "the client runs the extension",
    )
    await recv_type(packed, "room_joined")

    plain = await connect(url + plain_token, compression=None, max_size=None)
    check(extensions_header(plain) == "", "no extension for a client that offers none")
    await recv_type(plain, "room_joined")

    factory = permessage_deflate.ClientPerMessageDeflateFactory(
        client_no_context_takeover=True
    )
    nocontext = await connect(url + nocontext_token, extensions=[factory], max_size=None)
    check(
        extensions_header(nocontext)
        == "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        f"client_no_context_takeover echoed: {extensions_header(nocontext)!r}",
    )
    await recv_type(nocontext, "room_joined")

    # Messages over WS_COMPRESSION_MIN_BYTES from a client that keeps its
    # context (the server's inflater must follow it), then from one that
    # does not, then from the plain client: every member gets each one,
    # compressed or plain as it negotiated.
    receivers = [packed, plain, nocontext]
    for sender, n in [(packed, 3), (nocontext, 2), (plain, 2)]:
        for i in range(n):
            content = f"message {i}: " + "the release notes are ready for review " * 12
            SEEN.clear()
            await sender.send(json.dumps({"type": "message", "roomId": room, "content": content}))
            for ws in receivers:
                got = await recv_type(ws, "message")
                check(got["content"] == content, f"message {i} arrives whole")
            # The two compressed clients each saw one compressed text frame.
            check(
                SEEN.count((True, Opcode.TEXT)) >= 2,
                f"message {i} arrived compressed on the compressed connections: {SEEN}",
            )

    # A short message goes plain everywhere.
    SEEN.clear()
    await packed.send(json.dumps({"type": "message", "roomId": room, "content": "hi"}))
    for ws in receivers:
        check((await recv_type(ws, "message"))["content"] == "hi", "short message")
    check((True, Opcode.TEXT) not in SEEN, f"a short message is not compressed: {SEEN}")

    # About 60 KB inflated (well under 64 KiB): accepted and delivered.
    big = "".join(f"{i:05d} lorem ipsum dolor sit amet " for i in range(2000))[:60_000]
    await packed.send(json.dumps({"type": "message", "roomId": room, "content": big}))
    for ws in receivers:
        got = await recv_type(ws, "message")
        check(len(got["content"]) == 60_000 and got["content"] == big, "60 KB message")

    # Over 64 KiB once inflated, though a few hundred bytes compressed:
    # the server closes with 1009.
    huge = json.dumps({"type": "message", "roomId": room, "content": "a" * 70_000})
    await packed.send(huge)
    try:
        while True:
            await asyncio.wait_for(packed.recv(), TIMEOUT)
    except Exception:
        pass
    await asyncio.wait_for(packed.wait_closed(), TIMEOUT)
    check(packed.close_code == 1009, f"over 64 KiB inflated: close {packed.close_code}")

    # The others carry on.
    await plain.send(json.dumps({"type": "ping"}))
    check((await recv_type(plain, "pong")) == {"type": "pong"}, "the plain client carries on")
    await plain.close()
    await nocontext.close()
    print("OK", flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
