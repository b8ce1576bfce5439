#!/usr/bin/env python3
"""A local, scriptable mock of the Anthropic Messages API and the OpenAI Responses API.

corral's opt-in real-CLI suite (tests/real_cli.rs) points the real `claude` and `codex`
programs at it. It answers exactly in the wire formats the real APIs use (streaming SSE and
plain JSON), with reply texts and token usage the test chooses, and it logs every request
and the usage it returned, so the test knows the ground truth to compare corral's figures
with. Python 3 standard library only; deterministic (ids come from a counter).

    python3 mock_api.py [--port 0] [--log FILE] [--dump-dir DIR]

It prints `LISTENING <port>` on its first stdout line once it accepts connections.

Endpoints
---------
Anthropic (`x-api-key` must be present):
  POST /v1/messages[?beta=true]          stream true: SSE message_start, content_block_start,
                                         ping, content_block_delta..., content_block_stop,
                                         message_delta (usage), message_stop; else one JSON
                                         message
  POST /v1/messages/count_tokens         {"input_tokens": N}
OpenAI (`Authorization: Bearer ...` must be present):
  POST /v1/responses                     SSE response.created, response.in_progress,
                                         response.output_item.added, content_part.added,
                                         output_text.delta..., output_text.done,
                                         content_part.done, output_item.done,
                                         response.completed (usage with input_tokens_details
                                         cached_tokens / cache_write_tokens and
                                         output_tokens_details.reasoning_tokens)
HEAD or GET / -> 200 (connectivity checks).

Control (for the test):
  POST /_mock/script   {"anthropic": [STEP...], "openai": [STEP...], "reset_log": bool}
                       queues the answers of the next *conversation* requests, per API
  GET  /_mock/log      {"requests": [...]} every request so far
  GET  /_mock/state    {"holding": N, "queued": {...}}: streams held by delay_ms right now
  POST /_mock/reset    empties the queues and the log

A STEP is {"reply": TEXT, "usage": {...}, "delay_ms": N, "status": HTTP, "error": TEXT}.
Anthropic usage keys: input_tokens, output_tokens, cache_creation_input_tokens,
cache_read_input_tokens. OpenAI usage keys: input_tokens (includes cached), cached_tokens,
cache_write_tokens, output_tokens, reasoning_tokens. `delay_ms` holds the stream after its
first event (message_start / response.created) so a test can interrupt a turn mid-way; a
client that hangs up ends it. `{prompt}` in a reply is replaced by the request's last user
text.

Which requests are "conversation" requests: the TUIs also send side requests (a session
title, a summary, token counts). A Messages request that offers tools is a conversation
step; one without tools is a side request. A Responses request whose turn metadata says
`"thread_source":"thread_title"` (or that asks for a JSON-schema answer) is Codex's title
request, a side request. Side requests get a short default answer and
the default usage below, and are logged with "role": "side", so the test can tell what
lands in the transcript (conversation steps) from what only the CLI's own cost sees (all).
When a queue is empty, conversation requests get the default reply and usage.

Each log entry: seq, api, path, role (conversation/side/count_tokens/other), model, stream,
user_agent, session (X-Claude-Code-Session-Id or session-id header), prompt (last user
text, 200 chars), tools (count), tool_names, history (the assistant texts the request carries: the
conversation so far), reply, usage (exactly what was sent), status, aborted
(the client hung up mid-stream), message_id / response_id.
"""

import argparse
import json
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULT_ANTHROPIC_USAGE = {
    "input_tokens": 1200,
    "output_tokens": 30,
    "cache_creation_input_tokens": 5000,
    "cache_read_input_tokens": 0,
}
SIDE_ANTHROPIC_USAGE = {
    "input_tokens": 90,
    "output_tokens": 8,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 0,
}
DEFAULT_OPENAI_USAGE = {
    "input_tokens": 9000,
    "cached_tokens": 0,
    "cache_write_tokens": 0,
    "output_tokens": 40,
    "reasoning_tokens": 0,
}


class State:
    def __init__(self, log_path, dump_dir):
        self.lock = threading.Lock()
        self.queues = {"anthropic": [], "openai": []}
        self.requests = []
        self.counter = 0
        self.holding = 0  # streams held by a step's delay_ms right now
        self.log_path = log_path
        self.dump_dir = dump_dir

    def next_id(self):
        with self.lock:
            self.counter += 1
            return self.counter

    def take(self, api):
        with self.lock:
            q = self.queues[api]
            return q.pop(0) if q else None

    def record(self, entry, body):
        with self.lock:
            entry["seq"] = len(self.requests) + 1
            self.requests.append(entry)
            if self.log_path:
                with open(self.log_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(entry) + "\n")
            if self.dump_dir and body is not None:
                name = os.path.join(self.dump_dir, f"{entry['seq']:04d}-{entry['api']}.json")
                with open(name, "w", encoding="utf-8") as f:
                    json.dump(body, f, indent=1)


STATE = None


def tool_names(tools):
    """The names of the tools a request offers the model (MCP tools included)."""
    out = []
    for t in tools:
        if isinstance(t, dict):
            name = t.get("name") or (t.get("function") or {}).get("name")
            if name:
                out.append(name)
            elif t.get("type"):
                out.append(t["type"])  # e.g. Codex's tool_search, which defers MCP tools
    return out


def last_text_anthropic(body):
    for msg in reversed(body.get("messages") or []):
        if msg.get("role") != "user":
            continue
        content = msg.get("content")
        if isinstance(content, str):
            return content
        texts = [
            b.get("text", "")
            for b in content or []
            if isinstance(b, dict) and b.get("type") == "text"
            and not b.get("text", "").lstrip().startswith("<system-reminder>")
        ]
        if texts:
            return texts[-1]
        return ""
    return ""


def last_text_openai(body):
    items = body.get("input")
    if isinstance(items, str):
        return items
    for item in reversed(items or []):
        if not isinstance(item, dict) or item.get("role") != "user":
            continue
        content = item.get("content")
        if isinstance(content, str):
            text = content
        else:
            parts = [
                c.get("text", "")
                for c in content or []
                if isinstance(c, dict) and c.get("type") in ("input_text", "text")
            ]
            text = parts[-1] if parts else ""
        if text.lstrip().startswith("<environment_context>"):
            continue
        return text
    return ""


def assistant_texts(body):
    """Texts of the assistant turns a request carries (the conversation so far)."""
    out = []
    for m in (body.get("messages") or []) + [i for i in (body.get("input") or []) if isinstance(i, dict)]:
        if m.get("role") != "assistant":
            continue
        c = m.get("content")
        if isinstance(c, str):
            out.append(c)
            continue
        for b in c or []:
            if isinstance(b, dict) and b.get("type") in ("text", "output_text"):
                out.append(b.get("text", ""))
    return out


def chunks(text, n=3):
    """The reply in a few deltas, as the APIs stream it."""
    if not text:
        return [""]
    size = max(1, -(-len(text) // n))
    return [text[i:i + size] for i in range(0, len(text), size)]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "corral-mock-api/1"

    def log_message(self, fmt, *args):  # quiet: the JSON log says it all
        pass

    # --- plumbing -------------------------------------------------------------------------

    def read_json(self):
        n = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(n) if n else b""
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            return {"_unparsed": raw[:2000].decode("utf-8", "replace")}

    def send_json(self, status, obj, extra_headers=()):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in extra_headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def start_stream(self, extra_headers=()):
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        for k, v in extra_headers:
            self.send_header(k, v)
        self.end_headers()

    def sse(self, event, data):
        payload = f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(payload), payload))
        self.wfile.flush()

    def end_stream(self):
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def hold(self, delay_ms):
        """Waits delay_ms; False when the client hung up meanwhile."""
        with STATE.lock:
            STATE.holding += 1
        try:
            return self._hold(delay_ms)
        finally:
            with STATE.lock:
                STATE.holding -= 1

    def _hold(self, delay_ms):
        end = time.monotonic() + delay_ms / 1000.0
        while time.monotonic() < end:
            time.sleep(0.05)
            try:
                # a zero-length write does not detect a hang-up; peek at the socket instead
                self.connection.setblocking(False)
                try:
                    if self.connection.recv(1, socket.MSG_PEEK) == b"":
                        return False
                except BlockingIOError:
                    pass
                finally:
                    self.connection.setblocking(True)
            except OSError:
                return False
        return True

    # --- routes ---------------------------------------------------------------------------

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/_mock/log":
            with STATE.lock:
                reqs = list(STATE.requests)
            return self.send_json(200, {"requests": reqs})
        if path == "/_mock/state":
            with STATE.lock:
                state = {"holding": STATE.holding,
                         "queued": {k: len(v) for k, v in STATE.queues.items()}}
            return self.send_json(200, state)
        if path == "/":
            return self.send_json(200, {"ok": True})
        STATE.record({"api": "other", "path": self.path, "method": "GET", "role": "other",
                      "status": 404}, None)
        return self.send_json(404, {"type": "error", "error": {"type": "not_found_error",
                                                               "message": "mock: no such route"}})

    def do_POST(self):
        path = self.path.split("?", 1)[0]
        body = self.read_json()
        if path == "/_mock/script":
            with STATE.lock:
                for api in ("anthropic", "openai"):
                    STATE.queues[api].extend(body.get(api) or [])
                if body.get("reset_log"):
                    STATE.requests.clear()
            return self.send_json(200, {"ok": True})
        if path == "/_mock/reset":
            with STATE.lock:
                STATE.queues = {"anthropic": [], "openai": []}
                STATE.requests.clear()
            return self.send_json(200, {"ok": True})
        if path == "/v1/messages/count_tokens":
            return self.count_tokens(body)
        if path == "/v1/messages":
            return self.anthropic_messages(body)
        if path == "/v1/responses":
            return self.openai_responses(body)
        STATE.record({"api": "other", "path": self.path, "method": "POST", "role": "other",
                      "status": 404}, body)
        return self.send_json(404, {"type": "error", "error": {"type": "not_found_error",
                                                               "message": "mock: no such route"}})

    # --- Anthropic ------------------------------------------------------------------------

    def count_tokens(self, body):
        n = 100 + len(json.dumps(body)) // 4
        STATE.record({"api": "anthropic", "path": self.path, "role": "count_tokens",
                      "model": body.get("model"), "usage": {"input_tokens": n}, "status": 200},
                     body)
        return self.send_json(200, {"input_tokens": n})

    def anthropic_messages(self, body):
        if not self.headers.get("x-api-key") and not self.headers.get("authorization"):
            return self.send_json(401, {"type": "error", "error": {
                "type": "authentication_error", "message": "mock: x-api-key header is required"}})
        seq = STATE.next_id()
        tools = body.get("tools") or []
        role = "conversation" if tools else "side"
        prompt = last_text_anthropic(body)
        step = STATE.take("anthropic") if role == "conversation" else None
        step = step or {}
        if role == "side":
            usage = dict(SIDE_ANTHROPIC_USAGE)
            # a title request asks for JSON; any other side request gets plain text
            reply = step.get("reply") or ('{"title": "Mock session"}' if "title" in json.dumps(body.get("system", "")).lower() or body.get("output_format") else "Mock summary.")
        else:
            usage = dict(DEFAULT_ANTHROPIC_USAGE)
            usage.update(step.get("usage") or {})
            reply = step.get("reply", "Hello from the mock Anthropic API. ({prompt})")
        reply = reply.replace("{prompt}", prompt)
        model = body.get("model") or "claude-opus-4-8"
        msg_id = f"msg_mock_{seq:024d}"
        req_id = f"req_mock_{seq:024d}"
        entry = {
            "api": "anthropic", "path": self.path, "role": role, "model": model,
            "stream": bool(body.get("stream")), "user_agent": self.headers.get("user-agent"),
            "session": self.headers.get("x-claude-code-session-id"),
            "prompt": prompt[:200], "tools": len(tools), "reply": reply, "usage": usage,
            "tool_names": tool_names(tools),
            "history": assistant_texts(body),
            "message_id": msg_id, "status": 200, "aborted": False,
        }
        status = step.get("status")
        if status:
            entry.update(status=status, usage=None, reply=None)
            STATE.record(entry, body)
            kind = {401: "authentication_error", 429: "rate_limit_error",
                    529: "overloaded_error"}.get(status, "api_error")
            return self.send_json(status, {"type": "error", "error": {
                "type": kind, "message": step.get("error") or f"mock error {status}"}},
                [("request-id", req_id)])
        start_usage = dict(usage)
        start_usage["output_tokens"] = 1
        message = {
            "id": msg_id, "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": start_usage,
        }
        if not body.get("stream"):
            message["content"] = [{"type": "text", "text": reply}]
            message["stop_reason"] = "end_turn"
            message["usage"] = usage
            STATE.record(entry, body)
            return self.send_json(200, message, [("request-id", req_id)])
        self.start_stream([("request-id", req_id)])
        try:
            self.sse("message_start", {"type": "message_start", "message": message})
            if step.get("delay_ms") and not self.hold(step["delay_ms"]):
                raise BrokenPipeError("client hung up")
            self.sse("content_block_start", {"type": "content_block_start", "index": 0,
                                             "content_block": {"type": "text", "text": ""}})
            self.sse("ping", {"type": "ping"})
            for part in chunks(reply):
                self.sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                 "delta": {"type": "text_delta", "text": part}})
            self.sse("content_block_stop", {"type": "content_block_stop", "index": 0})
            self.sse("message_delta", {"type": "message_delta",
                                       "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                       "usage": {"output_tokens": usage["output_tokens"]}})
            self.sse("message_stop", {"type": "message_stop"})
            self.end_stream()
        except (BrokenPipeError, ConnectionResetError):
            entry["aborted"] = True
            self.close_connection = True
        STATE.record(entry, body)

    # --- OpenAI ---------------------------------------------------------------------------

    def openai_responses(self, body):
        if not (self.headers.get("authorization") or "").startswith("Bearer "):
            return self.send_json(401, {"error": {"message": "mock: missing bearer token",
                                                  "type": "invalid_request_error",
                                                  "code": "invalid_api_key"}})
        seq = STATE.next_id()
        prompt = last_text_openai(body)
        # Codex's TUI names each thread with a request of its own: another thread id,
        # `thread_source: thread_title`, a JSON-schema answer {"title": ...}.
        meta = (body.get("client_metadata") or {}).get("x-codex-turn-metadata") or ""
        fmt = ((body.get("text") or {}).get("format") or {}).get("type")
        role = "side" if '"thread_source":"thread_title"' in meta or fmt == "json_schema" else "conversation"
        step = (STATE.take("openai") if role == "conversation" else None) or {}
        u = dict(DEFAULT_OPENAI_USAGE)
        if role == "side":
            u.update(input_tokens=700, output_tokens=12)
            step = {"reply": '{"title": "Mock session"}'}
        u.update(step.get("usage") or {})
        reply = step.get("reply", "Hello from the mock OpenAI Responses API. ({prompt})")
        reply = reply.replace("{prompt}", prompt)
        model = body.get("model") or "gpt-5.5"
        resp_id = f"resp_mock_{seq:024d}"
        item_id = f"msg_mock_{seq:024d}"
        usage = {
            "input_tokens": u["input_tokens"],
            "input_tokens_details": {"cached_tokens": u["cached_tokens"],
                                     "cache_write_tokens": u["cache_write_tokens"]},
            "output_tokens": u["output_tokens"],
            "output_tokens_details": {"reasoning_tokens": u["reasoning_tokens"]},
            "total_tokens": u["input_tokens"] + u["output_tokens"],
        }
        entry = {
            "api": "openai", "path": self.path, "role": role, "model": model,
            "stream": bool(body.get("stream")), "user_agent": self.headers.get("user-agent"),
            "originator": self.headers.get("originator"),
            "session": self.headers.get("session-id") or self.headers.get("session_id"),
            "prompt": prompt[:200], "tools": len(body.get("tools") or []), "reply": reply,
            "tool_names": tool_names(body.get("tools") or []),
            "history": assistant_texts(body),
            "usage": usage, "response_id": resp_id, "status": 200, "aborted": False,
        }
        status = step.get("status")
        if status:
            entry.update(status=status, usage=None, reply=None)
            STATE.record(entry, body)
            return self.send_json(status, {"error": {"message": step.get("error") or f"mock error {status}",
                                                     "type": "server_error", "code": None}})
        created = int(time.time())
        base = {"id": resp_id, "object": "response", "created_at": created, "model": model,
                "status": "in_progress", "output": [], "usage": None, "error": None,
                "incomplete_details": None}
        out_item = {"id": item_id, "type": "message", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": reply, "annotations": []}]}
        if not body.get("stream"):
            done = dict(base, status="completed", output=[out_item], usage=usage)
            STATE.record(entry, body)
            return self.send_json(200, done)
        self.start_stream([("x-request-id", f"req_mock_{seq:024d}")])
        n = 0

        def ev(kind, data):
            nonlocal n
            data = dict(type=kind, sequence_number=n, **data)
            n += 1
            self.sse(kind, data)

        try:
            ev("response.created", {"response": base})
            if step.get("delay_ms") and not self.hold(step["delay_ms"]):
                raise BrokenPipeError("client hung up")
            ev("response.in_progress", {"response": base})
            ev("response.output_item.added", {"output_index": 0, "item": {
                "id": item_id, "type": "message", "status": "in_progress", "role": "assistant",
                "content": []}})
            ev("response.content_part.added", {"item_id": item_id, "output_index": 0,
                                               "content_index": 0, "part": {
                                                   "type": "output_text", "text": "",
                                                   "annotations": []}})
            for part in chunks(reply):
                ev("response.output_text.delta", {"item_id": item_id, "output_index": 0,
                                                  "content_index": 0, "delta": part})
            ev("response.output_text.done", {"item_id": item_id, "output_index": 0,
                                             "content_index": 0, "text": reply})
            ev("response.content_part.done", {"item_id": item_id, "output_index": 0,
                                              "content_index": 0, "part": out_item["content"][0]})
            ev("response.output_item.done", {"output_index": 0, "item": out_item})
            ev("response.completed", {"response": dict(base, status="completed",
                                                        output=[out_item], usage=usage)})
            self.end_stream()
        except (BrokenPipeError, ConnectionResetError):
            entry["aborted"] = True
            self.close_connection = True
        STATE.record(entry, body)


def main():
    global STATE
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--log", help="append one JSON line per request")
    ap.add_argument("--dump-dir", help="write every request body to DIR/NNNN-api.json")
    args = ap.parse_args()
    if args.dump_dir:
        os.makedirs(args.dump_dir, exist_ok=True)
    STATE = State(args.log, args.dump_dir)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    print(f"LISTENING {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
