"""Worker processes: how many a service runs, read from its settings and the machine's CPU quota."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.kit.workers import WorkerSettings, cgroup_cpu_quota, usable_cpus


@pytest.mark.parametrize(
    ("content", "expected"),
    [("max 100000\n", None), ("200000 100000\n", 2), ("150000 100000\n", 2), ("50000 100000", 1), ("junk", None)],
)
def test_a_cgroup_quota_is_read_in_whole_cpus(tmp_path: Path, content: str, expected: int | None) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text(content)
    assert cgroup_cpu_quota(cpu_max) == expected


def test_no_cgroup_file_means_no_quota(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(tmp_path / "missing") is None


def test_workers_default_to_one_per_usable_cpu() -> None:
    assert WorkerSettings().process_count() == usable_cpus() >= 1
    assert WorkerSettings(workers=3).process_count() == 3
