#!/usr/bin/env python3
"""Login-code hashing under a burst: 500 concurrent logins (from 16 loopback addresses, against
unknown accounts, so every one costs a full Argon2id check) plus 500 concurrent admin driver
creations, against a running hub; prints the answers and the hub's RSS before, at its peak and
10 s after. Loopback only.

    python3 scripts/bench-login-burst.py PORT HUB_PID ADMIN_TOKEN
"""
import http.client
import json
import sys
import threading
import time
import uuid

port, pid, admin = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]


def rss_mib():
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    return 0


answers, lock = {}, threading.Lock()


def call(path, body, source, token=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120, source_address=(source, 0))
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = "Bearer " + token
    try:
        conn.request("POST", path, json.dumps(body), headers)
        status = conn.getresponse().status
    except OSError as e:
        status = type(e).__name__
    with lock:
        answers[status] = answers.get(status, 0) + 1


base = peak = rss_mib()
done = False


def sample():
    global peak
    while not done:
        peak = max(peak, rss_mib())
        time.sleep(0.02)


sampler = threading.Thread(target=sample)
sampler.start()
threads = []
for i in range(500):
    login = {"role": "vendor", "account_id": str(uuid.uuid4()), "code": "%08d" % i}
    threads.append(threading.Thread(target=call, args=("/api/auth/login", login, "127.0.0.%d" % (2 + i % 16))))
    threads.append(threading.Thread(target=call, args=("/api/admin/drivers", {"name": "Burst %d" % i}, "127.0.0.1", admin)))
started = time.time()
for t in threads:
    t.start()
for t in threads:
    t.join()
took = time.time() - started
done = True
sampler.join()
time.sleep(10)
print(f"answers {answers} in {took:.1f} s; hub RSS {base} MiB before, {peak} MiB at peak, {rss_mib()} MiB 10 s later")
