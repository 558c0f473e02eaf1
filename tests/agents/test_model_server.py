"""Unit tests of the scripted model and the Claude Code handler (no agent needed):
    python3 -m unittest tests/agents/test_model_server.py   (from the repo root)"""
import http.client
import json
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import model_server  # noqa: E402
from runtimes import claude_code  # noqa: E402


def post(url, path, body, method="POST"):
    host, port = url.split("//")[1].split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=10)
    c.request(method, path, body=json.dumps(body) if body is not None else None,
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, r.getheader("Content-Type"), data


def sse_events(data):
    out = []
    for chunk in data.decode().split("\n\n"):
        if not chunk.strip():
            continue
        lines = dict(ln.split(": ", 1) for ln in chunk.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


TOOLS = [{"name": "Bash", "input_schema": {"type": "object"}}]


class ScriptedModelTest(unittest.TestCase):
    def test_steps_then_done(self):
        m = model_server.ScriptedModel([{"tool": "Bash", "input": {"command": "ls"}}, {"text": "x"}])
        self.assertEqual(m.next_step()["tool"], "Bash")
        self.assertEqual(m.next_step(), {"text": "x"})
        self.assertEqual(m.next_step(), {"text": "done"})
        self.assertEqual(m.next_step(), {"text": "done"})
        self.assertTrue(m.exhausted())

    def test_bad_step(self):
        with self.assertRaises(ValueError):
            model_server.ScriptedModel([{"tool": "Bash", "text": "both"}])

    def test_ids_unique(self):
        m = model_server.ScriptedModel([])
        self.assertEqual(len({m.new_id() for _ in range(100)}), 100)


class ClaudeHandlerTest(unittest.TestCase):
    def setUp(self):
        self.m = model_server.ScriptedModel([
            {"tool": "Bash", "input": {"command": "echo hi"}},
            {"tool": "Read", "input": {"file_path": "/x"}},
            {"text": "finished"}])
        self.srv, self.url = model_server.serve(claude_code.Handler, self.m)

    def tearDown(self):
        model_server.stop(self.srv)

    def test_conversation(self):
        msgs = [{"role": "user", "content": "go"}]
        st, ct, data = post(self.url, "/v1/messages?beta=true",
                            {"model": "m", "stream": True, "tools": TOOLS, "messages": msgs})
        self.assertEqual(st, 200)
        self.assertIn("text/event-stream", ct)
        ev = sse_events(data)
        names = [e for e, _ in ev]
        self.assertEqual(names[0], "message_start")
        self.assertEqual(names[-1], "message_stop")
        start = next(d for e, d in ev if e == "content_block_start")
        self.assertEqual(start["content_block"]["type"], "tool_use")
        tid = start["content_block"]["id"]
        js = "".join(d["delta"]["partial_json"] for e, d in ev if e == "content_block_delta")
        self.assertEqual(json.loads(js), {"command": "echo hi"})
        md = next(d for e, d in ev if e == "message_delta")
        self.assertEqual(md["delta"]["stop_reason"], "tool_use")

        # a retry of the same request gets the same answer and consumes nothing
        _, _, again = post(self.url, "/v1/messages", {"stream": True, "tools": TOOLS, "messages": msgs})
        self.assertEqual(next(d for e, d in sse_events(again) if e == "content_block_start")
                         ["content_block"]["id"], tid)
        self.assertEqual(self.m.pos, 1)

        # a side request (no tools) consumes no step
        st, _, side = post(self.url, "/v1/messages", {"messages": [{"role": "user", "content": "title?"}]})
        self.assertEqual(json.loads(side)["content"][0]["type"], "text")
        self.assertEqual(self.m.pos, 1)

        msgs += [{"role": "assistant", "content": [{"type": "tool_use", "id": tid, "name": "Bash",
                                                    "input": {"command": "echo hi"}}]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tid,
                                               "content": [{"type": "text", "text": "hi SECRET"}]}]}]
        st, ct, data = post(self.url, "/v1/messages", {"tools": TOOLS, "messages": msgs})  # non-streaming
        self.assertIn("application/json", ct)
        msg = json.loads(data)
        self.assertEqual(msg["content"][0]["name"], "Read")
        self.assertNotEqual(msg["content"][0]["id"], tid)
        res = self.m.tool_results()
        self.assertEqual(len(res), 1)
        self.assertEqual(res[0]["tool"], "Bash")
        self.assertIn("SECRET", self.m.tool_results_text())
        self.assertIn("SECRET", self.m.transcript_text())

    def test_probes(self):
        st, _, data = post(self.url, "/v1/messages/count_tokens", {"messages": []})
        self.assertEqual(st, 200)
        self.assertIn("input_tokens", json.loads(data))
        self.assertEqual(post(self.url, "/", None, "HEAD")[0], 200)
        self.assertEqual(post(self.url, "/v1/models", None, "GET")[0], 200)
        self.assertEqual(post(self.url, "/api/event_logging/batch", {})[0], 200)


if __name__ == "__main__":
    unittest.main()
