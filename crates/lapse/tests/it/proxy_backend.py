# The backend the proxy tests run as a process environment: Python's standard library only.
# argv[1] is the port. Routes:
#   GET  /<anything>     200 JSON {"method", "path", "headers"} (what the backend received)
#   POST /echo           200, the request body back
#   GET  /stream         chunked: "part1", then "part2" only after GET /release
#   GET  /release        lets /stream finish
#   GET  /stall          never answers (and never reads a body)
#   POST /stall          likewise
#   GET  /ws             a WebSocket echo (text and binary frames; close ends it)
import base64, hashlib, json, socketserver, struct, sys, threading
from http.server import BaseHTTPRequestHandler, HTTPServer

released = threading.Event()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body, ctype="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/stall":
            threading.Event().wait()
        if self.path == "/release":
            released.set()
            return self.reply(200, b"released", "text/plain")
        if self.path == "/stream":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.chunk(b"part1")
            released.wait(60)
            released.clear()
            self.chunk(b"part2")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            return
        if self.path == "/ws" and self.headers.get("Upgrade", "").lower() == "websocket":
            return self.websocket()
        seen = {"method": "GET", "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}
        self.reply(200, json.dumps(seen).encode())

    def do_POST(self):
        if self.path == "/stall":
            threading.Event().wait()
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        self.reply(200, body, "application/octet-stream")

    def chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def websocket(self):
        key = self.headers["Sec-WebSocket-Key"]
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept.decode())
        self.end_headers()
        self.wfile.flush()
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            opcode, length = head[0] & 0x0F, head[1] & 0x7F
            if length == 126:
                length = struct.unpack(">H", self.rfile.read(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
            if length < 126:
                out = bytes([0x80 | opcode, length])
            else:
                out = bytes([0x80 | opcode, 126]) + struct.pack(">H", length)
            self.wfile.write(out + data)
            self.wfile.flush()
            if opcode == 8:
                return


class Server(socketserver.ThreadingMixIn, HTTPServer):
    daemon_threads = True


Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
