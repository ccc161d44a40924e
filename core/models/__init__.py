"""SQLAlchemy 2 models of the center's state, one module per domain.

The schema is owned by Alembic migrations in ``core/migrations``; these
classes must stay in step with them (a test compares the two).  Every model
is re-exported here, so ``from core.models import X`` works for all of them
and importing this package registers every table on ``Base.metadata`` (which
Alembic compares against).
"""

from __future__ import annotations

from core.models.account import LoginThrottle, ShareLink, User, UserSite, WebSession
from core.models.ai import AIFinding, AIModel, AIResult
from core.models.audit import AuditHead, AuditRecord
from core.models.base import Base, utcnow
from core.models.delivery import Delivery, OutboundMessage
from core.models.ecg import ECGAnalysis
from core.models.job import Job
from core.models.lab import (
    LabControlLot,
    LabControlResult,
    LabCriticalNotice,
    LabCustodyEvent,
    LabInboundMessage,
    LabOrder,
    LabResult,
    LabRuleSet,
    LabRun,
    LabShipment,
    LabSpecimen,
)
from core.models.node import NodeHeartbeat
from core.models.pathology import (
    PathologyCase,
    PathologyConsult,
    PathologyEvent,
    PathologySlide,
)
from core.models.report import ReaderKey, Report, ReportVersion
from core.models.site import Site, SiteCertificate
from core.models.study import Instance, Study

__all__ = [
    "AIFinding",
    "AIModel",
    "AIResult",
    "AuditHead",
    "AuditRecord",
    "Base",
    "Delivery",
    "ECGAnalysis",
    "Instance",
    "Job",
    "LabControlLot",
    "LabControlResult",
    "LabCriticalNotice",
    "LabCustodyEvent",
    "LabInboundMessage",
    "LabOrder",
    "LabResult",
    "LabRuleSet",
    "LabRun",
    "LabShipment",
    "LabSpecimen",
    "LoginThrottle",
    "NodeHeartbeat",
    "OutboundMessage",
    "PathologyCase",
    "PathologyConsult",
    "PathologyEvent",
    "PathologySlide",
    "ReaderKey",
    "Report",
    "ReportVersion",
    "ShareLink",
    "Site",
    "SiteCertificate",
    "Study",
    "User",
    "UserSite",
    "WebSession",
    "utcnow",
]
