"""Schedulers stepped once per optimizer update (same module paths as pytorch-accelerated).

Step ``n`` of every scheduler here is the value for optimizer update number ``n`` (counting
from 0), i.e. the value after ``n`` completed updates; see
:mod:`pa_mixins.schedulers.scheduler_base`.
"""

from pa_mixins.schedulers.cosine_scheduler import CosineLrScheduler
from pa_mixins.schedulers.scheduler_base import SchedulerBase, StatefulSchedulerBase
from pa_mixins.schedulers.wsd_scheduler import WSDLrScheduler

__all__ = ["CosineLrScheduler", "SchedulerBase", "StatefulSchedulerBase", "WSDLrScheduler"]
