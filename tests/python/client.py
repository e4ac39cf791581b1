"""A python-socketio 5 client, written as for any Socket.IO server, run against sockgate by
tests/js/python-client.test.mjs.

Usage: client.py URL TRANSPORTS [COOKIE [jar|header]]
  TRANSPORTS: "polling", "websocket" or "polling,websocket" (starts polling, upgrades).
  The cookie is held the way a Python client that logged in holds it: in the cookie jar of
  a `requests.Session` passed as `http_session` (jar, the default), which python-engineio
  sends on every request; or as an extra handshake header (header), which python-engineio
  sends on the handshake only — enough for WebSocket, not for polling (sockgate binds a
  polling session to its handshake's cookie).
Prints one JSON object per line on stdout:
  {"ready": TRANSPORT}         connected, on the final transport (after the upgrade if any)
  {"got": EVENT, "data": DATA}  a notification, received by a ONE-argument handler
  {"refused": MESSAGE}          the connection was refused
Exits 0 after the first notification or a refusal, 1 on anything else (or after 20 s).
"""

import json
import sys
import threading
import time

import requests
import socketio


def say(**obj):
    print(json.dumps(obj), flush=True)


def main():
    url, transports = sys.argv[1], sys.argv[2].split(",")
    cookie = sys.argv[3] if len(sys.argv) > 3 else None
    held = sys.argv[4] if len(sys.argv) > 4 else "jar"
    http = requests.Session()
    headers = {}
    if cookie and held == "jar":
        name, _, value = cookie.partition("=")
        http.cookies.set(name, value)
    elif cookie:
        headers["Cookie"] = cookie
    sio = socketio.Client(reconnection=False, http_session=http)
    got = threading.Event()

    # One argument, as a handler for a plain Socket.IO server is written. Called with two,
    # python-socketio raises TypeError in its event thread and the message is lost.
    @sio.on("notification")
    def on_notification(data):
        say(got="notification", data=data)
        got.set()

    try:
        sio.connect(url, headers=headers, transports=transports, wait_timeout=10)
    except socketio.exceptions.ConnectionError as e:
        say(refused=str(e))
        return 0
    final = transports[-1]
    deadline = time.monotonic() + 10
    while sio.transport() != final and time.monotonic() < deadline:
        time.sleep(0.05)
    say(ready=sio.transport())
    ok = got.wait(timeout=20)
    sio.disconnect()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
