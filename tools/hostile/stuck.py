#!/usr/bin/env python3
"""Clients that never read, against a taskhub server: what each costs the server's memory.

One user creates tasks as large as a task may be (a prompt of 16 KiB and 32 params of 1 KiB:
49 KiB each) in a mode no worker claims, then opens calls over HTTP/1.1 from sockets that take
4 KiB and reads nothing of their answers, and the server's resident memory is sampled while
they hold. Standard library only; Linux (it reads /proc/PID/status of the server).

  snapshot  WatchTasks streams: each starts with a snapshot of the user's active tasks
  replay    the tasks are cancelled, then WatchTasks streams resume after seq 1: each replays
            the user's history
  list      ListTasks calls of 500 tasks a page

Run the server with an auth file, and give the token of one of its users, for example:

  go -C tools/load run . users --users 1 --out /tmp/auth.json
  go build -o /tmp/taskhub ./cmd/taskhub && /tmp/taskhub --demo-workers 0 --auth-file /tmp/auth.json &
  python3 tools/hostile/stuck.py snapshot --pid $! \
    --token $(python3 -c 'import json; print(json.load(open("/tmp/auth.json"))["users"][0]["token"])')

Each run wants a server with a fresh data dir: the tasks stay.
"""
import argparse, http.client, json, socket, time

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("attack", choices=["snapshot", "replay", "list"])
p.add_argument("--host", default="127.0.0.1")
p.add_argument("--port", type=int, default=8080)
p.add_argument("--token", required=True, help="a user's bearer token")
p.add_argument("--pid", required=True, help="the server's process id")
p.add_argument("--tasks", type=int, default=1000)
p.add_argument("--calls", type=int, default=300, help="calls that never read")
p.add_argument("--hold", type=float, default=20, help="seconds to hold them")
p.add_argument("--from-ip", default="127.0.0.9", help="the local address of the calls")
a = p.parse_args()

def rss():
    for line in open(f"/proc/{a.pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024

headers = {"Content-Type": "application/json", "Authorization": "Bearer " + a.token}
c = http.client.HTTPConnection(a.host, a.port)
def call(method, body):
    c.request("POST", "/taskhub.v1.TaskService/" + method, json.dumps(body), headers)
    r = c.getresponse()
    out = r.read()
    if r.status != 200:
        raise SystemExit(f"{method}: {r.status} {out[:200]!r}")
    return json.loads(out)

large = {"prompt": "p" * 16384, "mode": "nobody-claims", "params": {f"param{i:02d}": "v" * 1024 for i in range(32)}}
for _ in range(a.tasks):
    task = call("CreateTask", large)["task"]
    if a.attack == "replay":
        call("CancelTask", {"id": task["id"]})
print(f"{a.tasks} tasks of 49 KiB; the server's RSS {rss()} MiB", flush=True)

def envelope(b):
    return b"\x00" + len(b).to_bytes(4, "big") + b
def request(method, content_type, body):
    return (f"POST /taskhub.v1.TaskService/{method} HTTP/1.1\r\nHost: {a.host}\r\nAuthorization: Bearer {a.token}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body

if a.attack == "list":
    req = request("ListTasks", "application/json", json.dumps({"pageSize": 500}).encode())
else:
    body = {}
    if a.attack == "replay":  # the epoch, from a snapshot read to its first message
        s = socket.create_connection((a.host, a.port))
        s.sendall(request("WatchTasks", "application/connect+json", envelope(b"{}")))
        got = b""
        while b'"epoch"' not in got:
            chunk = s.recv(65536)
            if not chunk:
                raise SystemExit(f"WatchTasks: the server closed the stream: {got[:300]!r}")
            got += chunk
        s.close()
        start = got.index(b'"epoch":"') + len(b'"epoch":"')
        body = {"epoch": got[start:got.index(b'"', start)].decode(), "afterSeq": "1"}
    req = request("WatchTasks", "application/connect+json", envelope(json.dumps(body).encode()))

held, refused = [], 0
for _ in range(a.calls):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.bind((a.from_ip, 0))
    try:
        s.connect((a.host, a.port))
        s.sendall(req)
        held.append(s)
    except OSError:
        refused += 1
        s.close()
peak, end = 0, time.time() + a.hold
while time.time() < end:
    peak = max(peak, rss())
    time.sleep(0.2)
print(f"{a.attack}: {len(held)} calls that never read ({refused} refused), held {a.hold:g} s: the server's RSS at most {peak} MiB")
