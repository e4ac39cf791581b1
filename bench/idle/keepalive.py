"""Opens N HTTP/1.1 keep-alive connections to HOST:PORT, one request each, then leaves them
idle and prints the server's RSS growth per connection. Bounded: N connections, 60 s."""
import socket
import sys
import time

port, pid, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
deadline = time.time() + 60


def rss_kib():
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    raise SystemExit("no VmRSS for pid " + pid)


before = rss_kib()
conns = []
for i in range(n):
    if time.time() > deadline:
        raise SystemExit(f"only {i} of {n} connections in 60 s")
    s = socket.create_connection((f"127.0.0.{2 + i // 5000}", port), timeout=10)
    s.sendall(b"GET /hello HTTP/1.1\r\nHost: localhost\r\nUser-Agent: idle-cost\r\nAccept: */*\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit("connection closed before the response")
        head += chunk
    conns.append(s)
time.sleep(2)
print(f"idle keep-alive HTTP connection: {(rss_kib() - before) / n:.2f} KiB each ({n} connections)")
