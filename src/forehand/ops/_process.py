"""The operator surfaces of the `forehand manager` and `forehand server` processes.

`ManagerOps` builds the manager's hub (audit log, metrics, cluster view) before the driver starts,
so it sees every event from the first, and once the manager listens serves the admin API and
dashboard (`admin_http_port` >= 0). `ServerOps` subscribes a server's metrics and serves its
`/metrics` (`metrics_port` >= 0). Each writes its URL to `<ready_file>.http` before the process
writes its ready file, so scripts and tests know where to look.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from forehand.ops.http import (
    HTTPLimits,
    HTTPService,
    admin_app,
    load_admin_token,
    metrics_app,
    serve_http,
)
from forehand.ops.hub import OpsHub
from forehand.ops.metrics import ListenersCollector, ServerMetrics
from forehand.ops.policy import TunableRiskPolicy

__all__ = ["ManagerOps", "ServerOps", "url_file"]

_log = logging.getLogger("forehand.ops")


def url_file(ready_file: Path) -> Path:
    """Where a process writes the URL of its HTTP listener: `<ready_file>.http`."""
    return ready_file.with_name(ready_file.name + ".http")


def _write_url(ready_file: Path | None, url: str) -> None:
    if ready_file is None:
        return
    path = url_file(ready_file)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(url + "\n", encoding="utf-8")
    temporary.replace(path)


class ManagerOps:
    """The manager's hub and admin HTTP service."""

    def __init__(
        self,
        driver: Any,
        config: Any,
        policy: TunableRiskPolicy | None,
        listeners: Sequence[Any] = (),
    ) -> None:
        """`config` is the `ManagerProcessConfig`, `listeners` the process's (their counts join
        the metrics); call before `driver.start()`."""
        self._config = config
        self._token = (
            load_admin_token(config.admin_token_file) if config.admin_http_port >= 0 else None
        )
        self.hub = OpsHub(driver, policy=policy, audit_path=config.audit_log_path)
        self.hub.metrics.registry.register(ListenersCollector(listeners))
        self.service: HTTPService | None = None

    async def start(self) -> None:
        """Start sampling and, when configured, serve the API (after `driver.start()`)."""
        self.hub.start()
        config = self._config
        if config.admin_http_port < 0:
            return
        app = admin_app(self.hub, token=self._token)
        limits = HTTPLimits(
            connections_max=config.admin_http_connections_max,
            request_timeout_ms=config.admin_http_request_timeout_ms,
            idle_timeout_ms=config.admin_http_idle_timeout_ms,
            write_buffer_bytes=config.admin_http_write_buffer_bytes,
            write_stall_timeout_ms=config.admin_http_write_stall_timeout_ms,
        )
        self.service = await serve_http(
            app, host=config.admin_http_host, port=config.admin_http_port, limits=limits
        )
        _write_url(config.ready_file, self.service.url)
        _log.info(
            "admin API and dashboard on %s/ (mutations %s)",
            self.service.url,
            "need the admin token" if self._token else "disabled: no admin token",
        )

    async def close(self) -> None:
        """Stop the HTTP service and the hub."""
        await self.hub.close()
        if self.service is not None:
            await self.service.close()


class ServerOps:
    """A server's metrics and its `/metrics` service."""

    def __init__(self, driver: Any, config: Any, listeners: Sequence[Any] = ()) -> None:
        """`config` is the `ServerProcessConfig`, `listeners` the process's (their counts join
        the metrics); call before `driver.start()`."""
        self._config = config
        self.metrics = ServerMetrics(core=driver.core, driver=driver)
        self.metrics.registry.register(ListenersCollector(listeners))
        driver.subscribe(self.metrics)
        self.service: HTTPService | None = None

    async def start(self) -> None:
        """Serve `/metrics` when configured."""
        config = self._config
        if config.metrics_port < 0:
            return
        app = metrics_app(self.metrics.registry)
        self.service = await serve_http(app, host=config.metrics_host, port=config.metrics_port)
        _write_url(config.ready_file, self.service.url)
        _log.info("metrics on %s/metrics", self.service.url)

    async def close(self) -> None:
        """Stop the service."""
        if self.service is not None:
            await self.service.close()
