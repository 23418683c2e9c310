"""Operating Forehand: metrics, structured logs, the handoff audit log, the admin HTTP API, the
dashboard and what the operator CLI talks to.

The manager process runs an `OpsHub` over its driver (events in, verbs out) and serves it with
`admin_app`; servers serve their `ServerMetrics` with `metrics_app`. See docs/ARCHITECTURE.md,
section "Operations".
"""

from forehand.ops._process import ManagerOps, ServerOps, url_file
from forehand.ops.audit import AUDIT_KINDS, AuditLog, AuditRecord, RiskNote, part_name
from forehand.ops.http import (
    ADMIN_TOKEN_ENV,
    HTTPLimits,
    HTTPService,
    admin_app,
    load_admin_token,
    metrics_app,
    serve_http,
)
from forehand.ops.hub import DrainProgress, OpsError, OpsHub, OpsLimits
from forehand.ops.logs import LOG_FORMATS, configure_logging
from forehand.ops.metrics import ManagerMetrics, ServerMetrics
from forehand.ops.policy import POLICY_FIELD_PREFIXES, TunableRiskPolicy
from forehand.ops.view import ClusterView, PartLag, RiskTracker, ServerSample, ServerView

__all__ = [
    "ADMIN_TOKEN_ENV",
    "AUDIT_KINDS",
    "LOG_FORMATS",
    "POLICY_FIELD_PREFIXES",
    "AuditLog",
    "AuditRecord",
    "ClusterView",
    "DrainProgress",
    "HTTPLimits",
    "HTTPService",
    "ManagerMetrics",
    "ManagerOps",
    "OpsError",
    "OpsHub",
    "OpsLimits",
    "PartLag",
    "RiskNote",
    "RiskTracker",
    "ServerMetrics",
    "ServerOps",
    "ServerSample",
    "ServerView",
    "TunableRiskPolicy",
    "admin_app",
    "configure_logging",
    "load_admin_token",
    "metrics_app",
    "part_name",
    "serve_http",
    "url_file",
]
