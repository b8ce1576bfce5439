#!/usr/bin/env python3
"""An independent MCP client against a live corral daemon: the official Python SDK.

Usage: mcp_client.py URL [TOKEN]. Exits non-zero on the first failed check and prints
`N passed, 0 failed` at the end.
"""
import asyncio
import json
import sys

from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client

TOOLS = {
    "spawn_agent", "send_message", "wait_for_reply", "get_output", "get_instance",
    "list_instances", "interrupt", "terminate", "resume", "set_budget", "get_usage",
    "list_files", "read_file", "attach_command", "reply_to_parent", "read_inbox",
}

passed = 0


def check(cond, what):
    global passed
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        print(f"{passed} passed, 1 failed")
        sys.exit(1)
    passed += 1
    print(f"ok - {what}")


def data(result):
    """Structured content, falling back to the JSON text block."""
    if result.structuredContent is not None:
        return result.structuredContent
    return json.loads(result.content[0].text)


async def main(url, token):
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with streamablehttp_client(url, headers=headers) as (read, write, get_session_id):
        async with ClientSession(read, write) as s:
            init = await s.initialize()
            check(init.serverInfo.name == "corral", "server identifies as corral")
            check(get_session_id() is not None, "the server issued a session id")
            tools = (await s.list_tools()).tools
            check({t.name for t in tools} == TOOLS, "exactly the 16 tools are listed")
            check(all(t.description and t.inputSchema.get("type") == "object" for t in tools),
                  "every tool has a description and an object schema")

            r = await s.call_tool("spawn_agent", {
                "name": "py-echo", "backend": "pty", "wait_ready": True,
                "argv": ["sh", "-c", "while read l; do echo \"py:$l\"; done"]})
            check(not r.isError and data(r)["state"] == "ready", "spawn_agent (pty) is ready")

            progress = []

            async def on_progress(p, total, message):
                progress.append(p)

            r = await s.call_tool("send_message",
                                  {"instance": "py-echo", "text": "hello", "wait": True, "timeout_s": 20},
                                  progress_callback=on_progress)
            check(not r.isError and "py:hello" in data(r)["reply"], "send_message waits for the reply")

            r = await s.call_tool("get_output", {"instance": "py-echo", "lines": 10})
            check("py:hello" in data(r)["text"], "get_output returns the output")

            r = await s.call_tool("list_instances", {})
            check(data(r)["count"] == 1, "list_instances sees one instance")

            r = await s.call_tool("get_instance", {"instance": "nobody"})
            check(r.isError and "no instance" in r.content[0].text, "unknown instance is a tool error")

            r = await s.call_tool("send_message", {"instance": "py-echo", "text": "x", "wait": True, "timeout_s": 99})
            check(r.isError and "timeout_s = 99" in r.content[0].text, "out-of-range timeout is a tool error")

            r = await s.call_tool("read_file", {"instance": "py-echo", "path": "../x"})
            check(r.isError and "'..'" in r.content[0].text, "paths outside the workspace are refused")

            r = await s.call_tool("terminate", {"instance": "py-echo", "grace_s": 2})
            check(not r.isError and data(r)["state"] == "killed", "terminate ends the instance")
    print(f"{passed} passed, 0 failed")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
