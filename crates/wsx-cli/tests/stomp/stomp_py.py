"""stomp.py (PyPI) against `wsx serve`: over WebSocket (/stomp, no subprotocol: stomp.py
sends none) and over TCP (--stomp-listen). Each: connect, a JSON message through a
topic, a queue with client-individual acks, heart-beats, disconnect with a receipt.
usage: python3 stomp_py.py HOST WS_PORT TCP_PORT; prints "ok <transport>" lines."""
import json
import queue
import sys
import time

import stomp

host, ws_port, tcp_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])


class Inbox(stomp.ConnectionListener):
    def __init__(self):
        self.messages = queue.Queue()
        self.receipts = queue.Queue()
        self.connected = queue.Queue()
        self.errors = []

    def on_connected(self, frame):
        self.connected.put(frame.headers["version"])

    def on_message(self, frame):
        self.messages.put(frame)

    def on_receipt(self, frame):
        self.receipts.put(frame.headers["receipt-id"])

    def on_error(self, frame):
        self.errors.append(frame.headers.get("message"))


def check(name, conn, version):
    inbox = Inbox()
    conn.set_listener("inbox", inbox)
    conn.connect("guest", "guest", wait=True)
    assert inbox.connected.get(timeout=5) == version
    topic = f"/topic/py:{name}"
    conn.subscribe(topic, id="t", receipt="sub-t")
    assert inbox.receipts.get(timeout=5) == "sub-t"
    conn.send(topic, json.dumps({"via": name}), content_type="application/json", headers={"x-from": "py"})
    m = inbox.messages.get(timeout=5)
    assert json.loads(m.body) == {"via": name}, m.body
    assert m.headers["content-type"] == "application/json", m.headers
    assert m.headers["x-from"] == "py", m.headers
    assert m.headers["destination"] == topic, m.headers

    jobs = f"/queue/py-{name}"
    conn.subscribe(jobs, id="q", ack="client-individual", receipt="sub-q")
    assert inbox.receipts.get(timeout=5) == "sub-q"
    for i in range(3):
        conn.send(jobs, f"job{i}")
    seen = []
    for _ in range(3):
        m = inbox.messages.get(timeout=5)
        seen.append(m.body)
        if version == "1.2":
            conn.ack(m.headers["ack"])  # 1.2: the MESSAGE's ack header is the ACK's id
        else:
            conn.ack(m.headers["message-id"], "q")  # 1.1: message-id and subscription
    assert seen == ["job0", "job1", "job2"], seen

    conn.disconnect(receipt="bye")
    assert inbox.errors == [], inbox.errors
    print(f"ok {name}", flush=True)


ws = stomp.WSConnection([(host, ws_port)], ws_path="/stomp", heartbeats=(1000, 1000))
check("websocket", ws, "1.2")
tcp = stomp.Connection12([(host, tcp_port)], heartbeats=(1000, 1000))
check("tcp12", tcp, "1.2")
tcp = stomp.Connection11([(host, tcp_port)], heartbeats=(1000, 1000))
check("tcp11", tcp, "1.1")
