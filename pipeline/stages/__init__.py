"""The eight stages, one module each, in pipeline order."""

from __future__ import annotations

from pipeline.runner.stage import STAGE_ORDER, Stage


def all_stages() -> list[Stage]:
    from pipeline.stages.accuracy import AccuracyStage
    from pipeline.stages.build import BuildStage
    from pipeline.stages.fetch import FetchStage
    from pipeline.stages.publish import PublishStage
    from pipeline.stages.quantize import QuantizeStage
    from pipeline.stages.release import ReleaseStage
    from pipeline.stages.throughput import ThroughputStage
    from pipeline.stages.tune import TuneStage

    stages: list[Stage] = [FetchStage(), QuantizeStage(), BuildStage(), TuneStage(), AccuracyStage(),
                           ThroughputStage(), ReleaseStage(), PublishStage()]
    assert tuple(s.name for s in stages) == STAGE_ORDER  # noqa: S101 - developer invariant
    return stages
