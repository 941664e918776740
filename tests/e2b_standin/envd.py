"""envd, the agent inside every E2B sandbox: the Connect RPC `process.Process` service (served by the SDK's own
`ProcessASGIApplication`), `/files` and `/health`.

One server stands for all sandboxes, like E2B's edge proxy in front of them: with `E2B_SANDBOX_URL` set the SDK sends
every envd request there with `E2b-Sandbox-Id` and `X-Access-Token`, so the router picks the sandbox from the first
and checks the second. A sandbox that is gone gets the proxy's 502 "The sandbox <id> was not found", which the SDK
turns into `SandboxNotRunningException`; a stream in flight when its sandbox dies ends with UNAVAILABLE, after which
the SDK probes /health, gets that 502, and raises the same exception.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import time

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from e2b.envd.process import process_pb as pb
from e2b.envd.process.process_connect import ProcessASGIApplication
from protobuf import Oneof
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agentbox.sandboxes.local.owners import write_owned
from tests.e2b_standin.gateway import gateway_command, run_mcp_gateway
from tests.e2b_standin.jail import USERS, PathRefused, exited, reap
from tests.e2b_standin.state import GONE, CommandRecord, Proc, Sandbox, State

CHUNK = 32 << 10  # envd reads stdout/stderr in 32 KiB chunks
HANG = ["/bin/sleep", "infinity"]  # what a command hit by the `hang` fault runs instead


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"code": status, "message": message}, status_code=status)


def ev_start(pid: int) -> pb.ProcessEvent:
    return pb.ProcessEvent(event=Oneof("start", pb.ProcessEvent.StartEvent(pid=pid)))


def ev_data(kind: str, chunk: bytes) -> pb.ProcessEvent:
    return pb.ProcessEvent(event=Oneof("data", pb.ProcessEvent.DataEvent(output=Oneof(kind, chunk))))


def ev_end(returncode: int) -> pb.ProcessEvent:
    """Go's ProcessState as envd reports it: exit code -1 and "signal: killed" when a signal ended the process."""
    if returncode >= 0:
        status = f"exit status {returncode}"
        end = pb.ProcessEvent.EndEvent(exit_code=returncode, exited=True, status=status,
                                       error=status if returncode else None)
    else:
        name = {9: "killed", 15: "terminated"}.get(-returncode) or signal.Signals(-returncode).name.lower()
        end = pb.ProcessEvent.EndEvent(exit_code=-1, exited=False, status=f"signal: {name}", error=f"signal: {name}")
    return pb.ProcessEvent(event=Oneof("end", end))


def ev_keepalive() -> pb.ProcessEvent:
    return pb.ProcessEvent(event=Oneof("keepalive", pb.ProcessEvent.KeepAlive()))


def connection_lost(sbx: Sandbox) -> ConnectError:
    return ConnectError(Code.UNAVAILABLE, f"the connection to sandbox {sbx.id} ended before the stream completed")


class ProcessService:
    """envd's process.Process, one instance for all sandboxes (routed by `E2b-Sandbox-Id`)."""

    def __init__(self, state: State) -> None:
        self.state = state

    def sandbox(self, ctx) -> Sandbox:
        sbx = self.state.live(ctx.request_headers.get("e2b-sandbox-id"))
        if sbx is None:  # the router checked, but it may have died since
            raise ConnectError(Code.UNAVAILABLE, "The sandbox was not found")
        return sbx

    @staticmethod
    def user(ctx) -> str:
        """`user=` travels as `Authorization: Basic base64("<user>:")`; none means envd's default user."""
        auth = ctx.request_headers.get("authorization", "")
        user = "user"
        if auth.lower().startswith("basic "):
            user = base64.b64decode(auth[6:]).decode().split(":", 1)[0] or "user"
        if user not in USERS:
            raise ConnectError(Code.INVALID_ARGUMENT, f"user '{user}' does not exist in the sandbox")
        return user

    async def _spawn(self, sbx: Sandbox, req: pb.StartRequest, user: str, timeout_s: float | None) -> Proc:
        cfg = req.process
        cwd = cfg.cwd if cfg.has_field("cwd") and cfg.cwd else None
        if cwd is not None:
            try:
                _, host = self.state.jail.host_path(sbx.dir, cwd, user)
            except PathRefused:
                host = None  # elsewhere in the sandbox: bwrap says whether it exists
            if host is not None and not host.is_dir():
                raise ConnectError(Code.INVALID_ARGUMENT, f"cwd '{cwd}' does not exist")
        command = [cfg.cmd, *cfg.args]
        if self.state.take_fault("hang", " ".join(command), sbx.metadata):
            command = HANG
        env = self.state.jail.env(user, sbx.envs, dict(cfg.envs), offline=True)
        stdin = asyncio.subprocess.PIPE if (not req.has_field("stdin") or req.stdin) else asyncio.subprocess.DEVNULL
        routes = await self.state.routes(sbx)
        popen = await self.state.jail.spawn(
            self.state.jail.argv(sbx.dir, user, cwd, command, routes=routes), env,
            stdin=stdin, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        proc = Proc(pid=popen.pid, config=cfg, tag=req.tag if req.has_field("tag") else None, popen=popen)
        if not sbx.alive:  # killed while bwrap was starting: nobody else will reap this one
            proc.signal(signal.SIGKILL)
            await reap(sbx.dir)
            raise connection_lost(sbx)
        line = " ".join([cfg.cmd, *cfg.args])
        proc.vanish_after_start = self.state.take_fault("vanish", line, sbx.metadata) is not None
        cut = self.state.take_fault("cut", line, sbx.metadata)
        proc.cut_after = cut.params["after_seconds"] if cut else None
        sbx.procs[proc.pid] = proc

        async def pump(stream: asyncio.StreamReader, kind: str) -> None:
            while chunk := await stream.read(CHUNK):
                proc.broadcast(ev_data(kind, chunk))

        async def waiter() -> None:
            pumps = [asyncio.create_task(pump(popen.stdout, "stdout")), asyncio.create_task(pump(popen.stderr, "stderr"))]
            rc = await exited(popen)
            # like Go's cmd.Wait: stop reading once the process is gone, even if a grandchild holds the pipes
            _, pending = await asyncio.wait(pumps, timeout=0.2)
            for t in pending:
                t.cancel()
            proc.broadcast(ev_end(rc))
            proc.done.set()
            sbx.procs.pop(proc.pid, None)

        async def deadline() -> None:
            # envd runs the process under the request's Connect-Timeout-Ms deadline: killed when it passes, but
            # not when the client merely disconnects
            try:
                await asyncio.wait_for(proc.done.wait(), timeout_s + 0.05)
            except TimeoutError:
                proc.signal(signal.SIGKILL)

        proc.tasks.append(asyncio.create_task(waiter()))
        if timeout_s:
            proc.tasks.append(asyncio.create_task(deadline()))
        return proc

    async def _follow(self, sbx: Sandbox, proc: Proc, queue: asyncio.Queue, wrap, ctx):
        """Stream a process's events; the stream's own deadline (Connect-Timeout-Ms) ends it with deadline_exceeded
        just before envd's deadline kills the process; keepalives while it is silent."""
        keepalive_s = float(ctx.request_headers.get("keepalive-ping-interval") or 50)
        deadline = time.monotonic() + ctx.timeout_ms / 1000.0 if ctx.timeout_ms is not None else None
        try:
            yield wrap(ev_start(proc.pid))
            if proc.vanish_after_start:  # the injected fault: the sandbox dies under the running command
                asyncio.create_task(self.state.kill(sbx, "vanished"))
                await sbx.gone.wait()
                raise connection_lost(sbx)
            cut_at = time.monotonic() + proc.cut_after if proc.cut_after is not None else None
            while True:
                wait = keepalive_s
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        raise ConnectError(Code.DEADLINE_EXCEEDED, "context deadline exceeded")
                if cut_at is not None:
                    if time.monotonic() >= cut_at:  # the injected fault: the stream breaks, the process goes on
                        proc.cut_after = None  # once: a reconnection (Connect) streams on
                        raise ConnectError(Code.UNAVAILABLE, "stream cut by an injected fault")
                    wait = min(wait, max(cut_at - time.monotonic(), 0.001))
                try:
                    event = await asyncio.wait_for(queue.get(), wait)
                except TimeoutError:
                    if deadline is None or time.monotonic() < deadline:
                        yield wrap(ev_keepalive())
                    continue
                if event is GONE:
                    raise connection_lost(sbx)
                yield wrap(event)
                if event.event.field == "end":
                    return
        finally:
            proc.subscribers.discard(queue)

    def start(self, request: pb.StartRequest, ctx):
        return self._start(request, ctx)

    async def _start(self, request: pb.StartRequest, ctx):
        sbx = self.sandbox(ctx)
        user = self.user(ctx)
        cfg = request.process
        timeout_ms = ctx.timeout_ms
        self.state.commands.append(CommandRecord(
            sandbox_id=sbx.id, cmd=cfg.cmd, args=tuple(cfg.args), user=user, env_names=tuple(sorted(cfg.envs)),
            cwd=cfg.cwd if cfg.has_field("cwd") else None, timeout_ms=timeout_ms,
        ))
        wrap = lambda e: pb.StartResponse(event=e)
        gateway_argv = gateway_command(cfg.cmd, list(cfg.args))
        if gateway_argv is not None:
            yield wrap(ev_start(self.state.fake_pid()))
            rc, err = await run_mcp_gateway(self.state, sbx, gateway_argv, dict(cfg.envs))
            if err:
                yield wrap(ev_data("stderr", err))
            yield wrap(ev_end(rc))
            return
        proc = await self._spawn(sbx, request, user, timeout_ms / 1000.0 if timeout_ms is not None else None)
        queue: asyncio.Queue = asyncio.Queue()
        proc.subscribers.add(queue)
        async for item in self._follow(sbx, proc, queue, wrap, ctx):
            yield item

    def connect(self, request: pb.ConnectRequest, ctx):
        return self._connect(request, ctx)

    async def _connect(self, request: pb.ConnectRequest, ctx):
        sbx = self.sandbox(ctx)
        proc = self._select(sbx, request.process)
        queue: asyncio.Queue = asyncio.Queue()
        proc.subscribers.add(queue)
        async for item in self._follow(sbx, proc, queue, lambda e: pb.ConnectResponse(event=e), ctx):
            yield item

    @staticmethod
    def _select(sbx: Sandbox, selector: pb.ProcessSelector | None) -> Proc:
        sel = selector.selector if selector else None
        for proc in sbx.procs.values():
            if sel and ((sel.field == "pid" and proc.pid == sel.value) or (sel.field == "tag" and proc.tag == sel.value)):
                return proc
        what = f"{sel.field} {sel.value}" if sel else "?"
        raise ConnectError(Code.NOT_FOUND, f"process with {what} not found")

    async def list(self, request: pb.ListRequest, ctx) -> pb.ListResponse:
        sbx = self.sandbox(ctx)
        return pb.ListResponse(processes=[pb.ProcessInfo(config=p.config, pid=p.pid, tag=p.tag) for p in sbx.procs.values()])

    async def send_signal(self, request: pb.SendSignalRequest, ctx) -> pb.SendSignalResponse:
        proc = self._select(self.sandbox(ctx), request.process)
        proc.signal(signal.SIGTERM if request.signal == pb.Signal.SIGTERM else signal.SIGKILL)
        return pb.SendSignalResponse()

    async def send_input(self, request: pb.SendInputRequest, ctx) -> pb.SendInputResponse:
        proc = self._select(self.sandbox(ctx), request.process)
        if proc.popen.stdin is None or proc.popen.stdin.is_closing():
            raise ConnectError(Code.FAILED_PRECONDITION, "stdin not enabled or closed")
        proc.popen.stdin.write(request.input.input.value)
        await proc.popen.stdin.drain()
        return pb.SendInputResponse()

    async def close_stdin(self, request: pb.CloseStdinRequest, ctx) -> pb.CloseStdinResponse:
        proc = self._select(self.sandbox(ctx), request.process)
        if proc.popen.stdin:
            proc.popen.stdin.close()
        return pb.CloseStdinResponse()

    async def update(self, request, ctx):
        raise ConnectError(Code.UNIMPLEMENTED, "pty is not emulated by the E2B stand-in")

    async def stream_input(self, request, ctx):
        raise ConnectError(Code.UNIMPLEMENTED, "stream input is not emulated by the E2B stand-in")


class Files:
    """envd's `/files`: download (GET) and upload (POST, multipart or octet-stream), over the sandbox's private
    directories (see `Jail.host_path`)."""

    def __init__(self, state: State) -> None:
        self.state = state

    def _sandbox(self, request: Request) -> Sandbox:
        sbx = self.state.live(request.headers.get("e2b-sandbox-id"))
        assert sbx is not None  # the router checked
        return sbx

    @staticmethod
    def _user(request: Request) -> str:
        return request.query_params.get("username") or "user"

    async def get(self, request: Request) -> Response:
        sbx = self._sandbox(request)
        path = request.query_params.get("path")
        if not path:
            return error(400, "path is required")
        try:
            inside, host = self.state.jail.host_path(sbx.dir, path, self._user(request))
        except PathRefused as exc:
            return error(exc.status, exc.message)
        if not host.exists():
            return error(404, f"path '{inside}' does not exist")
        if host.is_dir():
            return error(400, f"path '{inside}' is a directory")
        return Response(host.read_bytes(), media_type="application/octet-stream")

    async def post(self, request: Request) -> Response:
        sbx = self._sandbox(request)
        user = self._user(request)
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form()
            entries = [(v.filename, await v.read()) for k, v in form.multi_items() if k == "file"]
            if len(entries) == 1 and request.query_params.get("path"):
                entries = [(request.query_params["path"], entries[0][1])]
        else:
            if not request.query_params.get("path"):
                return error(400, "path is required for octet-stream uploads")
            entries = [(request.query_params["path"], await request.body())]
        written = []
        for path, data in entries:
            try:
                inside, host = self.state.jail.host_path(sbx.dir, path, user)
            except PathRefused as exc:
                return error(exc.status, exc.message)
            if host.is_dir():
                return error(400, f"path '{inside}' is a directory")
            write_owned(host, data, self.state.jail.owner(sbx.dir, user))
            written.append({"path": inside, "name": os.path.basename(inside), "type": "file"})
        return JSONResponse(written)


def envd_app(state: State):
    process_app = ProcessASGIApplication(ProcessService(state))
    files = Files(state)

    async def health(request: Request) -> Response:
        return Response(status_code=204)

    http_app = Starlette(routes=[
        Route("/health", health, methods=["GET"]),
        Route("/files", files.get, methods=["GET"]),
        Route("/files", files.post, methods=["POST"]),
    ])

    async def router(scope, receive, send):
        if scope["type"] != "http":
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        sid = headers.get("e2b-sandbox-id", "")
        sbx = state.live(sid)
        if sbx is None:  # the edge proxy's answer; the SDK keys on "was not found"
            return await error(502, f"The sandbox {sid} was not found")(scope, receive, send)
        if scope["path"] != "/health" and headers.get("x-access-token") != sbx.envd_token:
            return await error(401, "unauthorized access, please provide a valid access token")(scope, receive, send)
        if scope["path"].startswith("/process.Process/"):
            return await process_app(scope, receive, send)
        return await http_app(scope, receive, send)

    return router
