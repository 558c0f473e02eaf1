"""Claude Code (the native CLI) driven by a scripted model over the Anthropic
Messages API (SSE streaming).  See runtimes/__init__.py for the interface."""
import hashlib
import http.server
import json
import os
import pathlib
import shutil
import subprocess
import threading
import uuid

NAME = "claude-code"
PACKAGE = "@anthropic-ai/claude-code"
REL_BINARY = "node_modules/@anthropic-ai/claude-code-linux-x64/claude"
SIDE_TEXT = "Scripted session"


def install(cache_dir):
    """npm install the CLI under CACHE_DIR/claude-code (skipped when the native
    binary is already there); returns the native binary's path."""
    prefix = pathlib.Path(cache_dir) / "claude-code"
    binary = prefix / REL_BINARY
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    npm = shutil.which("npm")
    if not npm:
        raise RuntimeError("claude-code: npm not found (apt-get install npm, or node 20+); "
                           f"cannot install {PACKAGE}")
    prefix.mkdir(parents=True, exist_ok=True)
    p = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(prefix), PACKAGE],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise RuntimeError(f"claude-code: `npm install --prefix {prefix} {PACKAGE}` did not produce "
                           f"{binary} (rc={p.returncode}):\n{p.stdout[-2000:]}")
    return binary


def stage(binary, home):
    """Optional hook (the harness calls it when present, as root, after the home is built):
    lay the agent out in HOME the way Claude Code's native installer does --
    ~/.local/share/claude/versions/<version> (a hard link to the cached binary, a copy
    across file systems) and the symlink ~/.local/bin/claude -- and return the path to run
    (~/.local/bin/claude), so what a policy sees is a real install, not the rig's cache."""
    binary, home = pathlib.Path(binary), pathlib.Path(home)
    try:
        version = json.loads((binary.parent / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        version = "current"
    st = os.stat(home)
    made = []
    for d in (home / ".local", home / ".local" / "bin", home / ".local" / "share",
              home / ".local" / "share" / "claude", home / ".local" / "share" / "claude" / "versions"):
        if not d.exists():
            d.mkdir()
            made.append(d)
    target = home / ".local" / "share" / "claude" / "versions" / version
    if not target.exists():
        try:
            os.link(binary, target)          # root-owned, 0755: the user cannot change it
        except OSError:
            shutil.copy2(binary, target)
            os.chmod(target, 0o755)
    link = home / ".local" / "bin" / "claude"
    if not link.is_symlink():
        link.symlink_to(target)
        made.append(link)
    for p in made:
        os.lchown(p, st.st_uid, st.st_gid)
    return link


def command(binary, prompt, workspace, home, base_url):
    argv = [str(binary), "-p", prompt, "--dangerously-skip-permissions",
            "--output-format", "text",
            # Glob and Grep are opt-in in current releases (the model is told to use
            # find/grep through Bash instead); naming them in --allowedTools opts in.
            "--allowedTools", "Glob,Grep"]
    env = {
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_API_KEY": "sk-ant-scripted-rig-not-a-real-key",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_MAX_RETRIES": "2",
        "IS_SANDBOX": "1",          # only consulted when run as root
        "SHELL": "/bin/bash",
        "TERM": "dumb",
        "NO_PROXY": "127.0.0.1,localhost,::1",
        "no_proxy": "127.0.0.1,localhost,::1",
    }
    return argv, env


# ---------------------------------------------------------------- model API
def _result_text(content):
    """Flatten a tool_result's content (a string or a list of blocks) to text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for b in content:
        if isinstance(b, dict):
            if b.get("type") == "text":
                parts.append(b.get("text", ""))
            elif b.get("type") == "image":
                parts.append("[image]")
            else:
                parts.append(json.dumps(b))
        else:
            parts.append(str(b))
    return "\n".join(parts)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "scripted-anthropic/1"
    _lock = threading.Lock()

    def log_message(self, fmt, *args):
        if os.environ.get("RIG_DEBUG_HTTP"):
            super().log_message(fmt, *args)

    # -- plumbing -----------------------------------------------------------
    def _send_json(self, obj, code=200):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("request-id", "req_" + uuid.uuid4().hex[:24])
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            return {}

    def do_HEAD(self):
        self._send_json({})

    def do_GET(self):
        self._send_json({"ok": True})

    def do_POST(self):
        path = self.path.split("?", 1)[0].rstrip("/")
        req = self._read_body()
        if path.endswith("/messages/count_tokens"):
            n = len(json.dumps(req.get("messages", []))) // 4 + 1
            return self._send_json({"input_tokens": n})
        if not path.endswith("/messages"):
            return self._send_json({})
        return self._messages(req)

    # -- one Messages request ---------------------------------------------
    def _messages(self, req):
        model = self.server.model
        messages = req.get("messages") or []
        side = not req.get("tools")
        entry = {"side": side, "n_messages": len(messages), "path": self.path,
                 "model": req.get("model")}
        if not side and not getattr(self.server, "tools_recorded", False):
            self.server.tools_recorded = True  # the tool list once per run
            entry["tools"] = [t.get("name") for t in req.get("tools") or []]
        model.record("request", entry)
        if side:
            blocks, stop = [{"type": "text", "text": SIDE_TEXT}], "end_turn"
        else:
            self._record_results(messages)
            blocks, stop = self._answer(messages)
        if req.get("stream"):
            self._stream(req, blocks, stop)
        else:
            self._send_json({
                "id": "msg_" + uuid.uuid4().hex[:24], "type": "message", "role": "assistant",
                "model": req.get("model") or "claude-scripted", "content": blocks,
                "stop_reason": stop, "stop_sequence": None,
                "usage": {"input_tokens": 10, "output_tokens": 10},
            })

    def _record_results(self, messages):
        model = self.server.model
        seen = getattr(self.server, "seen_results", None)
        if seen is None:
            seen = self.server.seen_results = set()
        last_user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
        if not last_user or not isinstance(last_user.get("content"), list):
            return
        for b in last_user["content"]:
            if not isinstance(b, dict) or b.get("type") != "tool_result":
                continue
            tid = b.get("tool_use_id")
            with self._lock:
                if tid in seen:
                    continue
                seen.add(tid)
            model.record("tool_result", {"tool_use_id": tid, "text": _result_text(b.get("content")),
                                         "is_error": bool(b.get("is_error"))})

    def _answer(self, messages):
        """The next script step as content blocks.  A request that repeats the
        same conversation (a retry) gets the same answer again, without
        consuming a step."""
        model = self.server.model
        key = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()
        cache = getattr(self.server, "answers", None)
        if cache is None:
            cache = self.server.answers = {}
        with self._lock:
            if key in cache:
                return cache[key]
            step = model.next_step()
            if "tool" in step:
                tid = model.new_id("toolu_")
                model.record("tool_use", {"id": tid, "tool": step["tool"], "input": step["input"]})
                ans = ([{"type": "tool_use", "id": tid, "name": step["tool"], "input": step["input"]}],
                       "tool_use")
            else:
                model.record("text", {"text": step["text"]})
                ans = ([{"type": "text", "text": step["text"]}], "end_turn")
            cache[key] = ans
            return ans

    def _stream(self, req, blocks, stop):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.send_header("request-id", "req_" + uuid.uuid4().hex[:24])
        self.end_headers()
        self.close_connection = True

        def ev(name, data):
            self.wfile.write(("event: %s\ndata: %s\n\n" % (name, json.dumps(data))).encode())

        ev("message_start", {"type": "message_start", "message": {
            "id": "msg_" + uuid.uuid4().hex[:24], "type": "message", "role": "assistant",
            "model": req.get("model") or "claude-scripted", "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 1}}})
        for i, b in enumerate(blocks):
            if b["type"] == "tool_use":
                ev("content_block_start", {"type": "content_block_start", "index": i,
                                           "content_block": {"type": "tool_use", "id": b["id"],
                                                             "name": b["name"], "input": {}}})
                js = json.dumps(b["input"])
                for k in range(0, len(js), 200):
                    ev("content_block_delta", {"type": "content_block_delta", "index": i,
                                               "delta": {"type": "input_json_delta",
                                                         "partial_json": js[k:k + 200]}})
            else:
                ev("content_block_start", {"type": "content_block_start", "index": i,
                                           "content_block": {"type": "text", "text": ""}})
                ev("content_block_delta", {"type": "content_block_delta", "index": i,
                                           "delta": {"type": "text_delta", "text": b["text"]}})
            ev("content_block_stop", {"type": "content_block_stop", "index": i})
        ev("message_delta", {"type": "message_delta",
                             "delta": {"stop_reason": stop, "stop_sequence": None},
                             "usage": {"output_tokens": 10}})
        ev("message_stop", {"type": "message_stop"})
        self.wfile.flush()
