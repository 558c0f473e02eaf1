"""Claude Code (the native CLI) driven by a scripted model over the Anthropic
Messages API (SSE streaming).  See runtimes/__init__.py for the interface."""
import json
import os
import pathlib
import shutil
import uuid

import install as install_  # tests/agents, on the path the harness gives runtimes
import model_server

NAME = "claude-code"
PACKAGE = "@anthropic-ai/claude-code"
REL_BINARY = "node_modules/@anthropic-ai/claude-code-linux-x64/claude"
SIDE_TEXT = "Scripted session"


def install(cache_dir):
    """npm install the CLI under CACHE_DIR/claude-code (skipped when the native
    binary is already there); returns the native binary's path."""
    return install_.npm_install(NAME, pathlib.Path(cache_dir) / "claude-code", PACKAGE, REL_BINARY)


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
class Handler(model_server.ApiHandler):
    server_version = "scripted-anthropic/1"

    def do_GET(self):
        self._send_json({"ok": True})

    def do_POST(self):
        path = self._path()
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
            model.record("tool_result", {"tool_use_id": tid, "text": model_server.content_text(b.get("content")),
                                         "is_error": bool(b.get("is_error"))})

    def _answer(self, messages):
        """The next script step as content blocks (a retry: the same again)."""
        model = self.server.model

        def make(step):
            if "tool" in step:
                tid = model.new_id("toolu_")
                model.record("tool_use", {"id": tid, "tool": step["tool"], "input": step["input"]})
                return ([{"type": "tool_use", "id": tid, "name": step["tool"],
                          "input": step["input"]}], "tool_use")
            model.record("text", {"text": step["text"]})
            return [{"type": "text", "text": step["text"]}], "end_turn"
        return self._answer_once(messages, make)

    def _stream(self, req, blocks, stop):
        self._start_sse()
        ev = self._sse

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
