"""Runtime-neutral scaffolding for the real-agent rig: a scripted "model" and a
local HTTP server that a runtime's request handler speaks its model API on.

    model = ScriptedModel([{"tool": "Bash", "input": {"command": "ls"}}, {"text": "ok"}])
    server, base_url = serve(runtime.Handler, model)   # http://127.0.0.1:PORT
    ... run the agent against base_url ...
    server.shutdown(); model.save("transcript.json")

A step is {"tool": NAME, "input": {...}} (the model asks the agent to call a
tool) or {"text": "..."} (the model answers in prose, which normally ends the
agent's turn).  After the script is exhausted every further request gets
{"text": "done"}.

A runtime module's Handler (a http.server.BaseHTTPRequestHandler subclass)
finds the model at self.server.model, calls next_step() once per real model
request (side requests such as title generation must not consume a step), and
record()s what it sees, in particular one "tool_result" entry per tool result
the agent sends back: {"tool_use_id": ..., "tool": NAME-if-known, "text": ...,
"is_error": bool}.  That is what the model SAW, so a test can check whether a
secret reached it.

Transcript entries are dicts {"kind": ..., "t": seconds-since-start, **payload}.
Kinds used by the shipped runtimes: "request" (one per model request:
{"side": bool, "n_messages": int}), "tool_use" (what the model asked for:
{"id", "tool", "input"}), "text" (prose the model answered), "tool_result".
"""
import copy
import gzip
import hashlib
import http.server
import json
import os
import subprocess
import threading
import time
import uuid

DONE = {"text": "done"}


class ScriptedModel:
    def __init__(self, steps, name=""):
        self.name = name
        self.steps = [copy.deepcopy(s) for s in (steps or [])]
        for i, s in enumerate(self.steps):
            if not isinstance(s, dict) or not (("tool" in s) ^ ("text" in s)):
                raise ValueError(f"step {i}: want {{tool: NAME, input: {{...}}}} or {{text: ...}}, got {s!r}")
            if "tool" in s:
                s.setdefault("input", {})
        self.lock = threading.Lock()
        self.pos = 0
        self.transcript = []
        self.t0 = time.monotonic()
        self._ids = 0
        self.tool_names = {}  # tool_use id -> tool name (so results can be attributed)

    # -- script -------------------------------------------------------------
    def next_step(self):
        """The next step of the script (a deep copy); {"text": "done"} once exhausted."""
        with self.lock:
            if self.pos < len(self.steps):
                s = copy.deepcopy(self.steps[self.pos])
                self.pos += 1
                return s
            return dict(DONE)

    def exhausted(self):
        with self.lock:
            return self.pos >= len(self.steps)

    def new_id(self, prefix="toolu_"):
        """A fresh, unique tool-call id."""
        with self.lock:
            self._ids += 1
            n = self._ids
        return "%s%02d%s" % (prefix, n, "%012x" % (int(time.time() * 1e6) & 0xFFFFFFFFFFFF))

    # -- transcript -------------------------------------------------------
    def record(self, kind, payload=None):
        e = {"kind": kind, "t": round(time.monotonic() - self.t0, 3)}
        if isinstance(payload, dict):
            e.update(payload)
        elif payload is not None:
            e["text"] = payload if isinstance(payload, str) else json.dumps(payload)
        with self.lock:
            if kind == "tool_use" and e.get("id"):
                self.tool_names[e["id"]] = e.get("tool")
            if kind == "tool_result" and not e.get("tool") and e.get("tool_use_id"):
                e["tool"] = self.tool_names.get(e["tool_use_id"])
            self.transcript.append(e)
        return e

    def entries(self, kind=None):
        with self.lock:
            return [dict(e) for e in self.transcript if kind is None or e["kind"] == kind]

    def tool_results(self):
        return self.entries("tool_result")

    def tool_results_text(self):
        return "\n".join(str(e.get("text", "")) for e in self.tool_results())

    def transcript_text(self):
        """Everything recorded, one entry a line (tool results' text verbatim)."""
        out = []
        for e in self.entries():
            rest = {k: v for k, v in e.items() if k not in ("kind", "t", "text")}
            line = "[%s]" % e["kind"]
            if rest:
                line += " " + json.dumps(rest, sort_keys=True)
            if "text" in e:
                line += "\n" + str(e["text"])
            out.append(line)
        return "\n".join(out) + ("\n" if out else "")

    def save(self, path):
        with open(path, "w") as f:
            json.dump({"name": self.name, "steps": self.steps, "consumed": self.pos,
                       "transcript": self.entries()}, f, indent=1)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def content_text(content):
    """A tool result's content as text, in either API's vocabulary: a string,
    a list of content blocks (`text`, Responses' `input_text`/`output_text`,
    images), or an item {content: ...}."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        if "content" in content:
            return content_text(content["content"])
        return json.dumps(content)
    parts = []
    for b in content:
        if isinstance(b, dict):
            t = b.get("type")
            if t in ("text", "input_text", "output_text"):
                parts.append(b.get("text", ""))
            elif t in ("image", "input_image"):
                parts.append("[image]")
            else:
                parts.append(json.dumps(b))
        else:
            parts.append(str(b))
    return "\n".join(parts)


class ApiHandler(http.server.BaseHTTPRequestHandler):
    """What every runtime's model API handler shares: JSON in and out, SSE
    out, and the answer to one conversation kept, so that a retried request
    gets the same step again without consuming one."""
    protocol_version = "HTTP/1.1"
    REQUEST_ID_HEADER = "request-id"
    _lock = threading.Lock()

    def log_message(self, fmt, *args):
        if os.environ.get("RIG_DEBUG_HTTP"):
            super().log_message(fmt, *args)

    def _path(self):
        return self.path.split("?", 1)[0].rstrip("/")

    def _send_json(self, obj, code=200):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header(self.REQUEST_ID_HEADER, "req_" + uuid.uuid4().hex[:24])
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        enc = (self.headers.get("Content-Encoding") or "").lower()
        try:
            if enc == "gzip":
                raw = gzip.decompress(raw)
            elif enc == "zstd":
                raw = _zstd_decompress(raw)
        except Exception:
            pass
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            return {}

    def do_HEAD(self):
        self._send_json({})

    def _start_sse(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.send_header(self.REQUEST_ID_HEADER, "req_" + uuid.uuid4().hex[:24])
        self.end_headers()
        self.close_connection = True

    def _sse(self, name, data):
        self.wfile.write(("event: %s\ndata: %s\n\n" % (name, json.dumps(data))).encode())

    def _answer_once(self, conversation, make):
        """`make(step)` for the next script step, once per conversation."""
        key = hashlib.sha256(json.dumps(conversation, sort_keys=True).encode()).hexdigest()
        cache = getattr(self.server, "answers", None)
        if cache is None:
            cache = self.server.answers = {}
        with self._lock:
            if key not in cache:
                cache[key] = make(self.server.model.next_step())
            return cache[key]


def _zstd_decompress(raw):
    try:
        import zstandard
        return zstandard.ZstdDecompressor().decompressobj().decompress(raw)
    except ImportError:
        p = subprocess.run(["zstd", "-dc"], input=raw, stdout=subprocess.PIPE, check=True)
        return p.stdout


def serve(handler_class, model, host="127.0.0.1", port=0):
    """Start a ThreadingHTTPServer on host:port (0 = any free port) in a daemon
    thread with server.model = model.  Returns (server, base_url); stop it with
    server.shutdown(); server.server_close()."""
    srv = _Server((host, port), handler_class)
    srv.model = model
    th = threading.Thread(target=srv.serve_forever, name="model-server", daemon=True)
    th.start()
    srv.thread = th
    h, p = srv.server_address[:2]
    return srv, "http://%s:%d" % (h, p)


def stop(server):
    try:
        server.shutdown()
    finally:
        server.server_close()
