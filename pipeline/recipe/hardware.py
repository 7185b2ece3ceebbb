"""What each target GPU is, for the cross-field rules and the compatibility key."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Gpu:
    name: str
    sm: int | None  # compute capability as major*10+minor; None for the CPU target
    memory_gib: int | None
    arch: str

    @property
    def fp8(self) -> bool:
        return self.sm is not None and self.sm >= 89

    @property
    def nvfp4(self) -> bool:
        return self.sm is not None and self.sm >= 100


GPUS: dict[str, Gpu] = {
    g.name: g
    for g in (
        Gpu("cpu", None, None, "cpu"),
        Gpu("a100", 80, 80, "ampere"),
        Gpu("a10g", 86, 24, "ampere"),
        Gpu("l4", 89, 24, "ada"),
        Gpu("l40s", 89, 48, "ada"),
        Gpu("h100", 90, 80, "hopper"),
        Gpu("h200", 90, 141, "hopper"),
        Gpu("gh200", 90, 96, "hopper"),
        Gpu("b200", 100, 180, "blackwell"),
        Gpu("gb200", 100, 186, "blackwell"),
        Gpu("b300", 103, 288, "blackwell"),
        Gpu("gb300", 103, 288, "blackwell"),
        Gpu("rtx-pro-6000", 120, 96, "blackwell"),
    )
}


def sm_label(sm: int | None) -> str:
    return "cpu" if sm is None else f"sm{sm}"
