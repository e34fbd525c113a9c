"""The domain adapters, as module-level singletons (backtest-kit's API, and order intents)."""

from persistkit.domains.intent import PersistIntentUtils
from persistkit.domains.partial import PersistPartialUtils
from persistkit.domains.risk import PersistRiskUtils
from persistkit.domains.signal import PersistScheduleUtils, PersistSignalUtils

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
