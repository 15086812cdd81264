"""A local stand-in for the Hugging Face Hub serving the tiny fixture model over HTTP on
127.0.0.1 (which diffseg accepts without TLS), as `huggingface_hub` downloads: a one-byte
request for each file's metadata (X-Repo-Commit, ETag = SHA-256, Content-Range), then the
content, optionally a little at a time so that a test can interrupt it."""

import hashlib
import http.server
import pathlib
import re
import threading
import time

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class TinyHub:
    """Serves `folder` as the repository `model` at any revision; `pause` seconds between
    each `step` bytes of content."""

    def __init__(self, folder: pathlib.Path, model: str, step: int = 1 << 20, pause: float = 0.0):
        self.folder, self.model, self.step, self.pause = folder, model, step, pause
        self.content_requests = 0
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                hub.answer(self)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def answer(self, request):
        match = re.fullmatch(rf"/{re.escape(self.model)}/resolve/[^/]+/(.+)", request.path)
        path = self.folder / match.group(1) if match else None
        if path is None or not path.is_file():
            request.send_response(404)
            request.send_header("Content-Length", "0")
            request.end_headers()
            return
        body = path.read_bytes()
        start = 0
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", request.headers.get("Range", ""))
        if wanted and wanted.group(2) == "0" and wanted.group(1) == "0":
            # The metadata request: one byte and the headers.
            request.send_response(206)
            request.send_header("X-Repo-Commit", COMMIT)
            request.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
            request.send_header("Content-Range", f"bytes 0-0/{len(body)}")
            request.send_header("Content-Length", "1")
            request.end_headers()
            request.wfile.write(body[:1])
            return
        self.content_requests += 1
        if wanted:
            start = int(wanted.group(1))
            request.send_response(206)
            request.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            request.send_response(200)
        request.send_header("Content-Length", str(len(body) - start))
        request.end_headers()
        try:
            for offset in range(start, len(body), self.step):
                request.wfile.write(body[offset:offset + self.step])
                request.wfile.flush()
                time.sleep(self.pause)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped listening (an interrupted download)
