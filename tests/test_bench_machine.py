"""bench/machine.py: the CPU a speed figure was measured on, read from /proc/cpuinfo's text."""

from bench.machine import describe, summary

CPUINFO = """processor	: 0
vendor_id	: AuthenticAMD
cpu family	: 25
model		: 17
model name	: AMD EPYC 9B14
flags		: fpu sse2 avx fma avx2 avx512f avx512_vnni

processor	: 1
vendor_id	: AuthenticAMD
cpu family	: 25
model		: 17
model name	: AMD EPYC 9B14
flags		: fpu sse2 avx fma avx2 avx512f avx512_vnni
"""


def test_describe_names_the_cpu_its_numbers_and_its_vector_instructions(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    machine = describe(path)
    assert machine["cpu"] == "AMD EPYC 9B14 (family 25, model 17)"
    assert machine["simd"] == ["avx2", "fma", "avx512f", "avx512_vnni"]  # in SIMD_FLAGS' order, once each
    assert summary(machine).startswith("AMD EPYC 9B14 (family 25, model 17), ")
    assert summary(machine).endswith(" CPUs, avx2 fma avx512f avx512_vnni")


def test_describe_without_cpuinfo_says_unknown(tmp_path):
    machine = describe(tmp_path / "missing")
    assert machine["cpu"] == "unknown" and machine["simd"] == []
    assert summary(machine).endswith("CPUs, no AVX2")
