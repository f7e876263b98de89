"""A real SMTP server for Trellis's tests, built on aiosmtpd.

Stores each accepted message as <dir>/<n>.eml. Control files in <dir>:
- FAIL: while it exists, every message is answered with its first line, or with
  "451 4.3.0 Try again later" when it is empty (write "421 4.3.2 Closing" for a 421);
- REJECT: addresses, one a line, refused at RCPT with "550 5.1.1 no such user";
- DROP_ONCE: the next message is stored and the connection dropped before the reply (the
  RFC 1047 window: the client cannot know it was accepted); the file is then removed;
- NO_PIPELINING: while it exists, EHLO does not offer PIPELINING (RFC 2920), which it
  otherwise does, as postfix does;
- SLOW: while it exists, each message is answered after as many milliseconds as it says
  (a slow server keeps claimed messages waiting for a connection).
Each RCPT appends a line to <dir>/RCPT_LOG: "pipelined" when the client had already sent
the command after it (DATA) before this RCPT was answered, else "waited".
Prints "ready <port>" once listening.

Usage: python3 smtp_sink.py DIR
"""

import asyncio
import itertools
import os
import signal
import socket
import sys
import threading

from aiosmtpd.controller import Controller


class Sink:
    def __init__(self, folder):
        self.folder = folder
        self.counter = itertools.count()
        self.lock = threading.Lock()

    def control(self, name):
        path = os.path.join(self.folder, name)
        try:
            with open(path) as f:
                return f.read()
        except FileNotFoundError:
            return None

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        # The 5-argument hook replaces aiosmtpd's reply, and must note the name itself.
        session.host_name = hostname
        if self.control("NO_PIPELINING") is None:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        # What the client sent after this RCPT and before its reply, still unread.
        ahead = bytes(server._reader._buffer).upper()
        with self.lock, open(os.path.join(self.folder, "RCPT_LOG"), "a") as log:
            log.write("pipelined\n" if b"DATA" in ahead else "waited\n")
        refused = self.control("REJECT")
        if refused is not None and address.lower() in refused.lower().split():
            return f"550 5.1.1 <{address}>: no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        slow = self.control("SLOW")
        if slow is not None:
            await asyncio.sleep(int(slow.strip() or "100") / 1000)
        failing = self.control("FAIL")
        if failing is not None:
            return failing.strip().splitlines()[0] if failing.strip() else "451 4.3.0 Try again later"
        with self.lock:
            n = next(self.counter)
        path = os.path.join(self.folder, f"{n:06d}.eml")
        with open(path + ".tmp", "wb") as f:
            f.write(envelope.original_content or envelope.content)
        os.rename(path + ".tmp", path)
        drop = os.path.join(self.folder, "DROP_ONCE")
        if os.path.exists(drop):
            os.remove(drop)
            # Stored, and the connection goes before the 250 leaves.
            server.transport.abort()
        return f"250 2.0.0 Ok: queued as {n}"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    folder = sys.argv[1]
    port = free_port()
    controller = Controller(Sink(folder), hostname="127.0.0.1", port=port)
    controller.start()
    print(f"ready {port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    controller.stop()


if __name__ == "__main__":
    main()
