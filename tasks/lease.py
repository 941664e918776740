"""A session's leases, renewed while its run lives: its slot of the sandbox limit (on Prefect's server) and its
sandbox (on the backend: E2B's `set_timeout`, the local supervisor's deadline).

Nobody else renews them. So however the run dies (SIGKILL, out of memory, its machine gone), both end by themselves
within their lease: the sandbox, and with it the gateway holding the MCP servers' credentials, within
`SANDBOX_LEASE_SECONDS`; the slot within `SLOT_LEASE_SECONDS`. The sandbox is never renewed further than the slot was
last renewed plus the sandbox's lease: a run cut off from the Prefect API keeps its sandbox for one lease at most,
and once the server has freed its slot (unreachable past the slot's lease), the run stops its sandbox rather than run
it outside the limit, and fails with `LeaseLost`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import TracebackType
from uuid import UUID

import httpx

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound

from agentbox.errors import LeaseLost, SandboxError, one_line
from agentbox.plan import SessionPlan
from agentbox.sandboxes import SandboxBackend, SandboxHandle

SLOT_LEASE_SECONDS = 60  # the shortest lease Prefect's server grants
SLOT_RENEW_EVERY = 15  # at most: three more tries before the server frees the slot
RENEW_FRACTION = 1 / 3  # a sandbox's lease is renewed when two thirds of it remain
RETRY_AFTER_FAILURE = 2.0  # seconds before a renewal that failed is tried again
CALL_TIMEOUT = 10.0  # the most one renewal may take (the Prefect client retries an unreachable API for longer)


class SessionLease:
    """Renews, in the background of the block, the session's slot (given by its lease id) and, once `cover`ed, its
    sandbox. When the slot lapses, the sandbox is killed and the block ends with LeaseLost."""

    def __init__(self, plan: SessionPlan, slot_lease: str | None) -> None:
        self.plan, self.slot_lease = plan, slot_lease
        self.lease_seconds = float(plan.lease_seconds or 0)
        self.handle: SandboxHandle | None = None
        self.sandboxes: SandboxBackend | None = None
        self.lost: LeaseLost | None = None
        self.renewals = 0  # the sandbox's, for the run's steps and the benchmark
        # The slot is renewed at least as often as the sandbox: the sandbox's end follows the slot's last renewal.
        self.slot_every = min(SLOT_RENEW_EVERY, (self.lease_seconds or SLOT_RENEW_EVERY) * RENEW_FRACTION)
        self._slot_renewed = time.monotonic()  # the slot was acquired just before the block
        self._slot_due = self._slot_renewed + self.slot_every
        self._sandbox_due = float("inf")
        self._wake = asyncio.Event()  # the sandbox to renew changed
        self._keepers: list[asyncio.Task] = []
        self._failing: set[str] = set()  # what failed to renew and was said so (once, until it works again)

    async def __aenter__(self) -> SessionLease:
        # Two loops: a renewal stuck on an unreachable API (the client retries) must not hold up the other.
        self._keepers = [asyncio.create_task(self._keep("slot"), name="agentbox-slot-lease"),
                         asyncio.create_task(self._keep("sandbox"), name="agentbox-sandbox-lease")]
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        for keeper in self._keepers:
            keeper.cancel()
        await asyncio.gather(*self._keepers, return_exceptions=True)
        if self.lost is not None and exc is not None and not isinstance(exc, LeaseLost):
            raise self.lost from exc  # the session failed because its sandbox was stopped: say why

    async def cover(self, handle: SandboxHandle | None) -> None:
        """Renew `handle`'s lease from now on (at once: its creation may have taken part of it); None: stop, for the
        teardown. A sandbox created after the slot lapsed is killed, and LeaseLost raised."""
        self.handle = handle
        if handle is not None and self.lost is not None:
            await self._lose("")
            raise self.lost
        if handle is not None and self.lease_seconds:
            self.sandboxes = self.sandboxes or self.plan.sandboxes(self.plan.read_settings())
            self._sandbox_due = time.monotonic()
        else:
            self._sandbox_due = float("inf")
        self._wake.set()

    async def _keep(self, what: str) -> None:
        if what == "slot" and not self.slot_lease:
            return
        while self.lost is None:
            due = self._slot_due if what == "slot" else self._sandbox_due
            if time.monotonic() >= due:
                await (self._renew_slot() if what == "slot" else self._renew_sandbox())
                continue
            if what == "sandbox":
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), None if due == float("inf") else due - time.monotonic())
            else:
                await asyncio.sleep(due - time.monotonic())

    async def _renew_slot(self) -> None:
        try:
            async with get_client() as client:
                await asyncio.wait_for(client.renew_concurrency_lease(
                    UUID(self.slot_lease), lease_duration=SLOT_LEASE_SECONDS), CALL_TIMEOUT)
        except (ObjectNotFound, httpx.HTTPStatusError) as exc:
            if isinstance(exc, ObjectNotFound) or exc.response.status_code in (404, 410):
                await self._lose("the server no longer knows it")
                return
            self._failed("slot", exc, RETRY_AFTER_FAILURE)
        except Exception as exc:  # noqa: BLE001 - the API unreachable: tried again until the slot's lease ends
            self._failed("slot", exc, RETRY_AFTER_FAILURE)
        else:
            self._slot_renewed = time.monotonic()
            self._slot_due = self._slot_renewed + self.slot_every
            self._recovered("slot")
            return
        if time.monotonic() - self._slot_renewed >= SLOT_LEASE_SECONDS:
            await self._lose(f"it was not renewed for {SLOT_LEASE_SECONDS} s")

    async def _renew_sandbox(self) -> None:
        seconds = self.lease_seconds
        if self.slot_lease:  # a run cut off from Prefect keeps its sandbox one lease past its slot's last renewal
            seconds -= time.monotonic() - self._slot_renewed
        if seconds <= 0:
            self._sandbox_due = float("inf")
            return
        try:
            await asyncio.wait_for(self.sandboxes.renew(self.handle, seconds), CALL_TIMEOUT)
        except SandboxError as exc:
            if not exc.retryable:  # gone: the session sees it on its next command
                self._sandbox_due = float("inf")
                return
            self._failed("sandbox", exc, RETRY_AFTER_FAILURE)
        except Exception as exc:  # noqa: BLE001 - tried again while the lease lasts
            self._failed("sandbox", exc, RETRY_AFTER_FAILURE)
        else:
            self.renewals += 1
            self._sandbox_due = time.monotonic() + self.lease_seconds * RENEW_FRACTION
            self._recovered("sandbox")

    def _failed(self, what: str, exc: BaseException, retry_in: float) -> None:
        if what not in self._failing:
            self._failing.add(what)
            get_run_logger().warning("Could not renew the lease of the session's %s (%s); trying again.", what,
                                     one_line(exc))
        if what == "slot":
            self._slot_due = time.monotonic() + retry_in
        else:
            self._sandbox_due = time.monotonic() + retry_in

    def _recovered(self, what: str) -> None:
        if what in self._failing:
            self._failing.discard(what)
            get_run_logger().info("The lease of the session's %s is renewed again.", what)

    async def _lose(self, why: str) -> None:
        """The slot is gone: stop the sandbox (it would run outside the limit) and have the block fail."""
        self.lost = self.lost or LeaseLost(
            f"The session's slot of the sandbox limit '{self.plan.concurrency_limit}' lapsed ({why}, after "
            f"{time.monotonic() - self._slot_renewed:.0f} s without reaching the Prefect API), so its sandbox was "
            "stopped.",
            "Check that the Prefect API is reachable from where the run executes; a retry of the run starts afresh.",
        )
        get_run_logger().error("%s", self.lost)
        if self.handle is not None and self.sandboxes is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.sandboxes.kill(self.handle.id))
