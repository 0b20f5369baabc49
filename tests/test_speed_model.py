"""The Pi 5 speed model's parts: the loop it reads from the assembly, the roofline it applies to
each product, and llvm-mca's cycles where llvm-mca is installed."""

import pytest

from quant import QType, asm
from tools import speed_model
from tools.speed_model import Call, Machine, Phase

ASM = """row_dot:
\tmov x8, xzr
.LBB0_2:
\tldr q0, [x0], #16
\tsdot v1.4s, v0.16b, v2.16b
\tadd x8, x8, #1
\tcmp x8, x4
\tb.lt .LBB0_2
.LBB0_3:
\tldrb w9, [x0]
\tcbnz w9, .LBB0_3
\tret
"""


def test_main_loop_is_the_longest_backward_branch():
    assert asm.mnemonics(asm.main_loop(ASM)) == ["ldr", "sdot", "add", "cmp", "b.lt"]


MACHINE = Machine("test", asm.PI5, "neoverse-n1", ghz=2.0, cores=4, bandwidth=10.0, slower=2.0)
CYCLES = {fmt: (8.0, 4.0) for fmt in speed_model.FORMAT_OF.values()}  # per block: decode, prefill per token


def test_a_product_costs_the_longer_of_compute_and_traffic():
    rows, cols = 4096, 4096
    blocks = rows * cols // 32
    nbytes = blocks * 18
    decode = Call(1, QType.Q4_0, rows, cols, nbytes, 0.0)
    compute = blocks * 8.0 / (2.0e9 * 4)
    traffic = nbytes / 10e9
    assert speed_model.product_seconds(decode, MACHINE, CYCLES, 10.0) == pytest.approx(max(compute, traffic))
    # prefill of 512 tokens: compute grows with the tokens, traffic with the 64-token tiles
    prefill = Call(512, QType.Q4_0, rows, cols, nbytes, 0.0)
    assert speed_model.product_seconds(prefill, MACHINE, CYCLES, 10.0) == pytest.approx(blocks * 4.0 * 512 / 8e9)
    slow_memory = speed_model.product_seconds(decode, MACHINE, CYCLES, 0.01)
    assert slow_memory == pytest.approx(nbytes / 0.01e9)
    # float weights have no integer loop to count: their traffic alone
    f16 = Call(1, QType.F16, rows, cols, rows * cols * 2, 0.0)
    assert speed_model.product_seconds(f16, MACHINE, CYCLES, 10.0) == pytest.approx(rows * cols * 2 / 10e9)


def test_prediction_adds_the_rest_of_the_step_scaled():
    phase = Phase("decode", 2, [Call(1, QType.Q8_0, 64, 64, 64 * 2 * 34, 0.25)], wall=1.0)  # 0.75 s not in products
    tps, kernel_s = speed_model.predict(phase, MACHINE, CYCLES, 10.0, slower=2.0)
    assert tps == pytest.approx(2 / (kernel_s + 0.75 * 2.0))


@pytest.mark.skipif(speed_model.llvm_mca() is None, reason="llvm-mca is not installed (Debian's llvm package)")
def test_llvm_mca_counts_the_pi_loops():
    """Sharing each unpacked block among four tokens makes a prefill token cheaper than a decode
    token, and a 4-bit block costs more than an 8-bit one (the nibbles are unpacked)."""
    cycles = speed_model.cycles_table(speed_model.llvm_mca(), asm.PI5, "neoverse-n1")
    for fmt, (decode, prefill) in cycles.items():
        assert 0 < prefill < decode, fmt
    assert cycles["q8_0"][0] < cycles["q4_0"][0] < cycles["q5_0"][0]


def test_trace_records_every_product_once_and_accounts_for_the_step(tmp_path):
    """A traced decode step records each matrix it reads once, products that share an input
    (one kernel call) included, changes nothing it computes, and its parts add up to the step."""
    import numpy as np

    import edgert
    from edgert.files.convert import convert
    from tests.reference import GOLDEN_DIR

    model = edgert.load(convert(GOLDEN_DIR, tmp_path / "tiny-q8_0.gguf", "q8_0"), n_ctx=64)
    assert any(t.packed is not None for t in model.weights.layers[0].__dict__.values() if hasattr(t, "packed"))
    state, again = model.new_state(), model.new_state()
    model.prefill(state, [2, 10, 11])
    model.prefill(again, [2, 10, 11])
    box = {}
    calls, wall, ops = speed_model.trace(model, lambda: box.setdefault("logits", model.decode_step(state, 12)))
    np.testing.assert_array_equal(box["logits"], model.decode_step(again, 12))
    cfg = model.config
    owning = sum(s.owns_kv for s in cfg.layers)
    per_layer = 5 + (2 if cfg.ple_dim else 0)  # q, o, gate, up, down, PLE gate and proj (k, v where owned)
    expected = cfg.n_layer * per_layer + 2 * owning + (1 if cfg.ple_dim else 0) + 1  # PLE model proj, LM head
    assert len(calls) == expected
    assert all(c.n == 1 and c.seconds >= 0 for c in calls)
    rows = speed_model.where_time_goes(Phase("decode", 1, calls, wall, ops))
    assert abs(sum(ms for _, ms in rows) - wall * 1000) < 1e-6
    assert {"attention", "RMS norms"} <= {what for what, _ in rows}


@pytest.mark.parametrize("cpu", ["emeraldrapids", "graniterapids", "znver5", "arrowlake"])
def test_a_core_newer_than_the_llvm_mca_at_hand_is_modelled_by_an_older_one_it_knows(cpu):
    """Debian 12's llvm-mca 14 knows no Emerald Rapids: the bench's speed model then uses the
    nearest older core's model, rather than failing on this machine."""
    import subprocess

    from tools.speed_model import llvm_mca, mca_core

    mca = llvm_mca()
    if mca is None:
        pytest.skip("no llvm-mca on PATH")
    core = mca_core(mca, "x86_64", cpu)
    done = subprocess.run([mca, "-mtriple=x86_64", f"-mcpu={core}"], input="add %rax, %rbx\n", capture_output=True,
                          text=True)
    assert done.returncode == 0 and "not a recognized processor" not in done.stderr, (core, done.stderr)
