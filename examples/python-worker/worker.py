#!/usr/bin/env python3
"""A taskhub worker in Python with the standard library only.

It claims tasks of one mode over Connect's JSON protocol, does their work (here: N steps of a
pretend job, reporting progress after each), and completes them. A task cancelled while it
runs is dropped at the next report (ReportProgress answers cancelRequested), and a failure
fails the task, retryably: taskhub requeues it while it has attempts left.

    python3 worker.py --mode import [--server http://127.0.0.1:8080] [--token T] [--once]

TASKHUB_SERVER and TASKHUB_TOKEN (a worker's token, with --auth-file) are the defaults of
--server and --token.
"""

import argparse
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request


class TaskhubError(Exception):
    """An error answer of the API: a Connect code and a message."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code


def call(server, token, method, body, timeout=40):
    """Calls WorkerService/method with body (a dict) and returns the answer (a dict)."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = "Bearer " + token
    req = urllib.request.Request(
        f"{server}/taskhub.v1.WorkerService/{method}",
        data=json.dumps(body).encode(),
        headers=headers,
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            return json.load(res)
    except urllib.error.HTTPError as e:
        try:
            err = json.load(e)
        except ValueError:
            err = {"code": "unknown", "message": f"HTTP {e.code}"}
        raise TaskhubError(err.get("code", "unknown"), err.get("message", "")) from None


def run_task(server, token, task, lease, step_seconds):
    """Does the task's work, reporting progress after each step. Returns the result, or None
    when the task was cancelled (the worker then stops and completes nothing)."""
    steps = int(task.get("params", {}).get("steps", "5"))
    for i in range(1, steps + 1):
        time.sleep(step_seconds)  # the work
        res = call(server, token, "ReportProgress", {
            "taskId": task["id"], "leaseToken": lease,
            "progress": 100 * i / (steps + 1), "message": f"step {i} of {steps}",
        })
        if res.get("cancelRequested"):
            return None
    return f"did {steps} steps for {task['prompt']!r}"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", default=os.environ.get("TASKHUB_SERVER", "http://127.0.0.1:8080"))
    p.add_argument("--token", default=os.environ.get("TASKHUB_TOKEN", ""))
    p.add_argument("--mode", required=True, help="the mode of the tasks to claim")
    p.add_argument("--worker-id", default=f"python-{socket.gethostname()}-{os.getpid()}")
    p.add_argument("--step-seconds", type=float, default=1.0, help="how long a pretend step takes")
    p.add_argument("--once", action="store_true", help="handle one task, then exit")
    args = p.parse_args()
    server = args.server.rstrip("/")

    while True:
        try:
            claim = call(server, args.token, "ClaimTask", {
                "workerId": args.worker_id, "modes": [args.mode], "waitSeconds": 20,
            })
        except (TaskhubError, OSError) as e:
            print(f"claim: {e}; trying again in 2 s", file=sys.stderr)
            time.sleep(2)
            continue
        task = claim.get("task")
        if not task:
            continue  # nothing came within the wait: ask again
        lease = claim["leaseToken"]
        print(f"claimed {task['id']} ({task['prompt']!r})", file=sys.stderr)
        try:
            result = run_task(server, args.token, task, lease, args.step_seconds)
            if result is None:
                print(f"{task['id']} was cancelled: dropped", file=sys.stderr)
            else:
                call(server, args.token, "CompleteTask", {"taskId": task["id"], "leaseToken": lease, "result": result})
                print(f"completed {task['id']}", file=sys.stderr)
        except TaskhubError as e:
            # failed_precondition: the lease is gone (it expired, or the task ended): drop it.
            print(f"{task['id']}: {e}", file=sys.stderr)
        except Exception as e:  # the work itself failed: taskhub retries it elsewhere
            call(server, args.token, "FailTask", {
                "taskId": task["id"], "leaseToken": lease, "error": str(e)[:1000], "retryable": True,
            })
            print(f"failed {task['id']}: {e}", file=sys.stderr)
        if args.once:
            return


if __name__ == "__main__":
    main()
