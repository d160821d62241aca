#!/usr/bin/env python3
"""Watches a user's tasks live, with the standard library only, and prints one JSON event per
line. It reads WatchTasks' stream of Connect envelopes (a flags byte, a 4-byte length, then a
JSON message) and, when the connection drops, resumes after the last seq it saw, so that no
event is missed.

    python3 watch.py [--server http://127.0.0.1:8080] [--token T] [--until-finished TASK_ID]

TASKHUB_SERVER and TASKHUB_TOKEN (a user's token) are the defaults of --server and --token.
"""

import argparse
import http.client
import json
import os
import struct
import sys
import time
import urllib.parse

FINISHED = {"TASK_STATE_COMPLETED", "TASK_STATE_FAILED", "TASK_STATE_CANCELLED"}


def watch(server, token, epoch, after_seq):
    """Yields the messages of one WatchTasks stream, resuming after (epoch, after_seq)."""
    u = urllib.parse.urlsplit(server)
    conn_class = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
    conn = conn_class(u.netloc, timeout=60)  # heartbeats come every 15 s
    body = json.dumps({"epoch": epoch, "afterSeq": str(after_seq)} if epoch else {}).encode()
    headers = {"Content-Type": "application/connect+json", "Connect-Protocol-Version": "1"}
    if token:
        headers["Authorization"] = "Bearer " + token
    conn.request("POST", "/taskhub.v1.TaskService/WatchTasks", struct.pack(">BI", 0, len(body)) + body, headers)
    res = conn.getresponse()
    if res.status != 200:
        raise RuntimeError(f"HTTP {res.status}: {res.read(1000)!r}")
    try:
        while True:
            head = res.read(5)
            if len(head) < 5:
                return
            flags, size = struct.unpack(">BI", head)
            msg = json.loads(res.read(size))
            if flags & 2:  # the end of the stream: an error, or none
                if "error" in msg:
                    raise RuntimeError(f"{msg['error'].get('code')}: {msg['error'].get('message')}")
                return
            yield msg
    finally:
        conn.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", default=os.environ.get("TASKHUB_SERVER", "http://127.0.0.1:8080"))
    p.add_argument("--token", default=os.environ.get("TASKHUB_TOKEN", ""))
    p.add_argument("--until-finished", metavar="TASK_ID", help="exit once this task has finished")
    args = p.parse_args()
    epoch, last = "", 0
    while True:
        try:
            for msg in watch(args.server.rstrip("/"), args.token, epoch, last):
                if "snapshot" in msg:
                    snap = msg["snapshot"]
                    epoch, last = snap.get("epoch", ""), int(snap.get("seq", "0"))
                    print(json.dumps({"snapshot": len(snap.get("tasks", [])), "seq": last}), flush=True)
                elif "event" in msg:
                    e = msg["event"]
                    last = int(e["seq"])
                    t = e["task"]
                    print(json.dumps({"seq": last, "kind": e["kind"], "task": t["id"], "state": t["state"],
                                      "progress": t.get("progress", 0), "message": t.get("message", "")}), flush=True)
                    if t["id"] == args.until_finished and t["state"] in FINISHED:
                        return
        except (OSError, RuntimeError, ValueError) as e:
            print(f"watch: {e}; resuming after seq {last} in 1 s", file=sys.stderr)
            time.sleep(1)


if __name__ == "__main__":
    main()
