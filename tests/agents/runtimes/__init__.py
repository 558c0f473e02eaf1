"""Agent runtimes the rig can drive.  Each module implements the RUNTIME INTERFACE:

    NAME: str                                   # the `runtime:` value in a sessions file
    def install(cache_dir: pathlib.Path) -> pathlib.Path
        # idempotent; returns the agent binary; raises RuntimeError with a clear message
    Handler: type[http.server.BaseHTTPRequestHandler]
        # speaks the runtime's model API; the scripted model is self.server.model
        # (model_server.ScriptedModel); records "tool_result" entries and gives every
        # tool call a fresh id (model.new_id())
    def command(binary, prompt, workspace, home, base_url) -> tuple[list[str], dict[str, str]]
        # argv and the extra environment for one non-interactive run (the harness runs it
        # as the throwaway user, cwd = workspace, HOME = home)
    def stage(binary, home) -> pathlib.Path            # OPTIONAL: called as root after the home
        # is built; lays the agent out as a real install in the home (owned by the home's
        # owner) and returns the path to run instead of BINARY (--no-stage skips it)
"""
import importlib

RUNTIMES = {"claude-code": "claude_code", "codex": "codex"}


def load(name):
    """The runtime module for a sessions file's `runtime:` value."""
    mod = RUNTIMES.get(name, name.replace("-", "_"))
    try:
        return importlib.import_module(__name__ + "." + mod)
    except ModuleNotFoundError as e:
        raise RuntimeError(f"unknown runtime {name!r} (no runtimes/{mod}.py): {e}") from e
