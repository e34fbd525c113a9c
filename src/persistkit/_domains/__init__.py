"""The domain adapters, as module-level singletons (backtest-kit's API, and order intents)."""

from persistkit._domains.intent import PersistIntentUtils
from persistkit._domains.partial import PersistPartialUtils
from persistkit._domains.risk import PersistRiskUtils
from persistkit._domains.signal import PersistScheduleUtils, PersistSignalUtils

__all__ = [
    "PersistIntentAdapter",
    "PersistIntentUtils",
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
PersistIntentAdapter = PersistIntentUtils()
