"""The four domain adapters, as module-level singletons (backtest-kit's API)."""

from persistkit.domains.partial import PersistPartialUtils
from persistkit.domains.risk import PersistRiskUtils
from persistkit.domains.signal import PersistScheduleUtils, PersistSignalUtils

__all__ = [
    "PersistPartialAdapter",
    "PersistPartialUtils",
    "PersistRiskAdapter",
    "PersistRiskUtils",
    "PersistScheduleAdapter",
    "PersistScheduleUtils",
    "PersistSignalAdapter",
    "PersistSignalUtils",
]

PersistSignalAdapter = PersistSignalUtils()
PersistScheduleAdapter = PersistScheduleUtils()
PersistRiskAdapter = PersistRiskUtils()
PersistPartialAdapter = PersistPartialUtils()
