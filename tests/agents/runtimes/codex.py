"""OpenAI Codex CLI (the native Rust binary from npm @openai/codex) driven by a
scripted model over the OpenAI Responses API (POST {base_url}/responses, SSE
streaming).  See runtimes/__init__.py for the interface.

Codex 0.171 speaks only the Responses wire API to a custom provider
(`wire_api = "chat"` is rejected).  Per request it sends the whole conversation
as `input` items; the model answers with output items:

  * a `function_call` item {name, call_id, arguments: JSON string} for its
    function tools: `exec_command` (unified exec: {"cmd": "...", "workdir"?,
    "yield_time_ms"?, "tty"?, "login"?, "shell"?}; one pid execs
    `/proc/self/exe --codex-run-as-process-setup ...`, then `$SHELL -c '<restore
    env; . ~/.codex/shell_snapshots/ID.sh; exec ...>'`, then `$SHELL -c CMD`),
    `write_stdin` ({"session_id": N, "chars": "..."}), `view_image`, ...;
  * a `custom_tool_call` item {name, call_id, input: raw text} for its
    freeform tools: `apply_patch` (the text is a `*** Begin Patch` ...
    `*** End Patch` patch);
  * a `message` item with `output_text` content (ends the turn).

The agent sends each result back in the next request as a
`function_call_output` / `custom_tool_call_output` item with the same call_id;
those are recorded as "tool_result" entries (what the model SAW).

Steps in a sessions file use Codex's own tool names:
    {"tool": "exec_command", "input": {"cmd": "make test"}}
    {"tool": "apply_patch", "input": {"patch": "*** Begin Patch\\n...*** End Patch\\n"}}
    (the input of a freeform tool may also be the patch string itself)
Whether a tool is freeform is read from the tool list of the request itself.

The model name matters: `gpt-5.5` is in Codex's bundled model catalog, and
for it Codex offers the freeform `apply_patch` tool (with an unknown name it
falls back to generic metadata, warns, and offers no apply_patch tool; an
`apply_patch <<'EOF'` heredoc through exec_command still works then).
"""
import json
import os
import pathlib
import re
import time
import uuid

import install as install_  # tests/agents, on the path the harness gives runtimes
import model_server

NAME = "codex"
PACKAGE = "@openai/codex"
VERSION = os.environ.get("RIG_CODEX_VERSION", "0.171.0")   # the version this rig was written against
TRIPLE = "x86_64-unknown-linux-musl"
REL_BINARY = f"node_modules/@openai/codex-linux-x64/vendor/{TRIPLE}/bin/codex"
MODEL = "gpt-5.5"
PROVIDER = "scripted"
KEY_ENV = "CODEX_SCRIPTED_API_KEY"
SIDE_TEXT = "Scripted session"


def install(cache_dir):
    """npm install the CLI under CACHE_DIR/codex (skipped when the native binary
    is already there); returns the native binary's path.  The npm wrapper
    (bin/codex.js) only execve()s this binary with CODEX_MANAGED_BY_NPM=1, so
    the rig runs the binary directly (no node process in the chain)."""
    spec = f"{PACKAGE}@{VERSION}" if VERSION else PACKAGE
    return install_.npm_install(NAME, pathlib.Path(cache_dir) / "codex", spec, REL_BINARY)


def _toml_str(s):
    return json.dumps(str(s))   # a JSON string is a valid TOML basic string


def command(binary, prompt, workspace, home, base_url):
    """`codex exec` for one non-interactive turn: no approvals, no Codex sandbox
    (its Linux sandbox is bwrap/landlock/seccomp; we must not depend on it), a
    custom Responses provider at base_url with a dummy key from the environment
    (no login), and the optional network side channels switched off (update
    check, analytics, feedback, OTEL, websockets, the plugin marketplace sync).
    Codex keeps its state in
    $HOME/.codex (CODEX_HOME is left unset, as for a real user)."""
    base = base_url.rstrip("/") + "/v1"
    cfg = {
        "model_provider": _toml_str(PROVIDER),
        f"model_providers.{PROVIDER}.name": _toml_str("scripted"),
        f"model_providers.{PROVIDER}.base_url": _toml_str(base),
        f"model_providers.{PROVIDER}.env_key": _toml_str(KEY_ENV),
        f"model_providers.{PROVIDER}.wire_api": _toml_str("responses"),
        f"model_providers.{PROVIDER}.request_max_retries": "1",
        f"model_providers.{PROVIDER}.stream_max_retries": "1",
        f"model_providers.{PROVIDER}.stream_idle_timeout_ms": "120000",
        f"model_providers.{PROVIDER}.supports_websockets": "false",
        "model_reasoning_effort": _toml_str("low"),
        "check_for_update_on_startup": "false",
        "analytics.enabled": "false",
        "feedback.enabled": "false",
        "otel.exporter": _toml_str("none"),
        # on by default, the plugins feature runs `git ls-remote
        # https://github.com/openai/plugins.git HEAD` at every start (a DNS query and an
        # HTTPS connect that fail in the rig's netns); RIG_CODEX_PLUGINS=1 keeps it
        "features.plugins": "true" if os.environ.get("RIG_CODEX_PLUGINS") == "1" else "false",
    }
    argv = [str(binary), "exec",
            "--skip-git-repo-check",
            "--dangerously-bypass-approvals-and-sandbox",
            "--color", "never",
            "-m", MODEL,
            "-C", str(workspace)]
    for k, v in cfg.items():
        argv += ["-c", f"{k}={v}"]
    argv += ["--", prompt]
    bindir = pathlib.Path(binary).parent
    env = {
        KEY_ENV: "sk-scripted-rig-not-a-real-key",
        "CODEX_MANAGED_BY_NPM": "1",   # what the npm wrapper sets before its execve
        "CODEX_MANAGED_PACKAGE_ROOT": str(bindir.parents[3] / "codex"),
        "SHELL": "/bin/bash",
        "TERM": "dumb",
        "NO_COLOR": "1",
        "NO_PROXY": "127.0.0.1,localhost,::1",
        "no_proxy": "127.0.0.1,localhost,::1",
    }
    return argv, env


# ---------------------------------------------------------------- model API



_EXIT_RE = re.compile(r"^(?:Process exited with code|Exit code:) (-?\d+)\s*$", re.M)
_FAIL_PREFIXES = ("apply_patch verification failed", "unsupported call", "failed to parse",
                  "execution error", "error:")


def _is_error(out, text):
    """Codex sends results as plain text; tell failures by their wording: a non-zero
    `Process exited with code N` (exec_command) or `Exit code: N` (apply_patch), or a
    refusal/verification message in place of output."""
    if isinstance(out, dict) and out.get("success") is False:
        return True
    m = _EXIT_RE.search(text or "")
    if m:
        return m.group(1) != "0"
    return (text or "").lstrip().lower().startswith(_FAIL_PREFIXES)


def _stable(items):
    """The conversation minus volatile per-request ids (retries re-send it)."""
    out = []
    for it in items or []:
        if isinstance(it, dict):
            it = {k: v for k, v in it.items() if k != "id"}
        out.append(it)
    return out


class Handler(model_server.ApiHandler):
    server_version = "scripted-responses/1"
    REQUEST_ID_HEADER = "x-request-id"

    def do_GET(self):
        path = self._path()
        if path.endswith("/models"):
            return self._send_json({"object": "list", "data": [
                {"id": MODEL, "object": "model", "created": 0, "owned_by": "scripted"}]})
        self._send_json({"ok": True})

    def do_POST(self):
        path = self._path()
        req = self._read_body()
        if not path.endswith("/responses"):
            if path.endswith("/compact"):       # remote compaction: keep the history as is
                return self._send_json({"output": req.get("input") or []})
            return self._send_json({})
        return self._responses(req)

    # -- one Responses request --------------------------------------------
    def _request_kind(self):
        try:
            return json.loads(self.headers.get("x-codex-turn-metadata") or "{}").get("request_kind")
        except ValueError:
            return None

    def _responses(self, req):
        model = self.server.model
        items = req.get("input") or []
        if isinstance(items, str):
            items = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": items}]}]
        kind = self._request_kind()
        side = not req.get("tools") or (kind not in (None, "turn"))
        model.record("request", {"side": side, "n_messages": len(items), "path": self.path,
                                 "model": req.get("model"), "request_kind": kind})
        if side:
            out = [{"type": "message", "role": "assistant", "id": "msg_" + uuid.uuid4().hex[:24],
                    "status": "completed",
                    "content": [{"type": "output_text", "text": SIDE_TEXT, "annotations": []}]}]
        else:
            self._record_results(items)
            out = self._answer(req, items)
        self._stream(req, out)

    def _record_results(self, items):
        model = self.server.model
        seen = getattr(self.server, "seen_results", None)
        if seen is None:
            seen = self.server.seen_results = set()
        for it in items:
            if not isinstance(it, dict) or it.get("type") not in (
                    "function_call_output", "custom_tool_call_output", "local_shell_call_output"):
                continue
            cid = it.get("call_id")
            with self._lock:
                if cid in seen:
                    continue
                seen.add(cid)
            out = it.get("output")
            text = model_server.content_text(out)
            is_error = _is_error(out, text)
            model.record("tool_result", {"tool_use_id": cid, "text": text, "is_error": is_error})

    def _answer(self, req, items):
        """The next script step as output items.  A request that repeats the
        same conversation (a retry) gets the same answer again, without
        consuming a step."""
        model = self.server.model
        kinds = {}
        for t in req.get("tools") or []:
            if isinstance(t, dict) and t.get("name"):
                kinds[t["name"]] = t.get("type")

        def make(step):
            if "tool" in step:
                cid = model.new_id("call_")
                name, inp = step["tool"], step["input"]
                model.record("tool_use", {"id": cid, "tool": name, "input": inp})
                if kinds.get(name) == "custom" or isinstance(inp, str):
                    if isinstance(inp, dict):
                        inp = inp.get("patch", inp.get("input", json.dumps(inp)))
                    ans = [{"type": "custom_tool_call", "id": "ctc_" + uuid.uuid4().hex[:24],
                            "status": "completed", "call_id": cid, "name": name, "input": str(inp)}]
                else:
                    ans = [{"type": "function_call", "id": "fc_" + uuid.uuid4().hex[:24],
                            "status": "completed", "call_id": cid, "name": name,
                            "arguments": json.dumps(inp)}]
            else:
                model.record("text", {"text": step["text"]})
                ans = [{"type": "message", "role": "assistant", "id": "msg_" + uuid.uuid4().hex[:24],
                        "status": "completed",
                        "content": [{"type": "output_text", "text": step["text"], "annotations": []}]}]
            return ans
        return self._answer_once(_stable(items), make)

    def _stream(self, req, out):
        self._start_sse()
        rid = "resp_" + uuid.uuid4().hex[:24]
        seq = [0]

        def ev(name, data):
            data = dict(data, type=name, sequence_number=seq[0])
            seq[0] += 1
            self._sse(name, data)

        resp = {"id": rid, "object": "response", "created_at": int(time.time()),
                "status": "in_progress", "model": req.get("model") or MODEL, "output": []}
        ev("response.created", {"response": resp})
        ev("response.in_progress", {"response": resp})
        for i, item in enumerate(out):
            t = item["type"]
            if t == "message":
                ev("response.output_item.added", {"output_index": i, "item": dict(item, status="in_progress", content=[])})
                text = item["content"][0]["text"]
                part = {"type": "output_text", "text": "", "annotations": []}
                ev("response.content_part.added", {"output_index": i, "item_id": item["id"],
                                                   "content_index": 0, "part": part})
                for k in range(0, len(text), 200):
                    ev("response.output_text.delta", {"output_index": i, "item_id": item["id"],
                                                      "content_index": 0, "delta": text[k:k + 200]})
                ev("response.output_text.done", {"output_index": i, "item_id": item["id"],
                                                 "content_index": 0, "text": text})
                ev("response.content_part.done", {"output_index": i, "item_id": item["id"],
                                                  "content_index": 0, "part": dict(part, text=text)})
            elif t in ("function_call", "custom_tool_call"):
                # The call's text streams as deltas: a function's JSON
                # arguments, a custom (freeform) tool's input.
                field, events = {
                    "function_call": ("arguments", "response.function_call_arguments"),
                    "custom_tool_call": ("input", "response.custom_tool_call_input"),
                }[t]
                ev("response.output_item.added", {"output_index": i,
                                                  "item": dict(item, status="in_progress", **{field: ""})})
                a = item[field]
                for k in range(0, len(a), 200):
                    ev(events + ".delta", {"output_index": i, "item_id": item["id"],
                                           "delta": a[k:k + 200]})
                ev(events + ".done", {"output_index": i, "item_id": item["id"], field: a})
            ev("response.output_item.done", {"output_index": i, "item": item})
        ev("response.completed", {"response": dict(resp, status="completed", output=out, usage={
            "input_tokens": 100, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 10, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 110})})
        self.wfile.flush()
