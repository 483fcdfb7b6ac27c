"""A mixture of experts (model.moe_experts) across triad-train's grids and workflow. The model
itself is checked against PyTorch in test_reference_model.py (the moe and moeswiglu cases:
gradients, recomputation, AdamW steps with the load-balancing loss).

- The same training curve, load-balancing term and busiest-expert load on every grid: tensor
  parallelism (each expert's hidden units split, the router replicated), with sequence
  parallelism, pipeline stages, data parallelism with ZeRO-1, 2 and 3, and full
  recomputation; under context parallelism (where each rank balances its own rows) the same
  curve without the load-balancing term.
- A resumed run continues bit for bit as the uninterrupted one; the checkpoint holds the model's
  routing (moe_* attributes) and a config that disagrees with it is refused; triad-ckpt verifies
  it, triad-generate samples from it, triad-convert refuses to export it to a dense format.
- Expert parallelism (parallel.ep): the same curves and validation losses as one rank, on dp 2
  and 4, with pipeline stages, context parallelism, full recomputation, ZeRO-1, 2 and 3 (the
  experts' packed slices over their own replicas) and bf16; its checkpoints hold whole tensors
  that resume at another ep and ZeRO stage.
- DeepSeek-V3's routing (model.moe_score = sigmoid, model.moe_routed_scale) with its
  auxiliary-loss-free balancing (train.moe_bias_rate): the same curves and loads on every grid,
  a bit-exact resume (the routers' biases in the checkpoint), sampling from it.
- Combinations that do not run yet are refused with one error naming the key.
"""

from __future__ import annotations

import shutil
import subprocess
import zlib

import h5py
import numpy as np

from test_mpi_runs import run
from triad_run import (VOCAB, assert_clean_error, assert_clean_failure, exe, tiny_config, tool,
                       train)

MOE = dict(model__moe_experts=4, model__moe_top_k=2, model__mlp_hidden=64,
           model__moe_shared_hidden=32, train__moe_aux_loss=0.05, train__moe_z_loss=0.01)


def curves(path):
    """The routing's curves, and each expert's share of each layer's choices where
    train.moe_load_every wrote them ([steps, layers, experts])."""
    with h5py.File(path / "metrics.h5", "r") as f:
        out = {k: f["train"][k][:]
               for k in ("loss", "grad_norm", "moe_aux_loss", "moe_max_load", "moe_z_loss")}
        if "moe_load" in f:
            layers = sorted(k for k in f["moe_load"] if k != "step")
            out["moe_load"] = np.stack([f["moe_load"][k][:] for k in layers], axis=1)
        return out


def layer_norms(path):
    """The per-layer gradient and weight norms (train.norms_every), by column."""
    with h5py.File(path / "metrics.h5", "r") as f:
        return {k: f["norms"][k][:] for k in f["norms"]}


def run_curves(tmp_path, n, cfg, name, *args):
    """Runs cfg as run `name` on n ranks (more arguments after) and returns its curves."""
    p = run(n, "--config", cfg, "--run.name", name, *args)
    assert p.returncode == 0, name + p.stdout + p.stderr
    return curves(tmp_path / "runs" / name)


def follows_one_rank(tmp_path, cfg, want, grids, *extra):
    """Runs cfg (with extra arguments) on each (ranks, grid arguments) of grids: the routing's
    curves of each are `want`'s (one rank's) to 3e-5. Returns the runs' names."""
    names = []
    for n, grid in grids:
        name = f"g{n}_" + "_".join(map(str, grid)).replace("--", "").replace(".", "-")
        got = run_curves(tmp_path, n, cfg, name, *extra, *grid)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=3e-5, err_msg=f"{name} {k}")
        names.append(name)
    return names


def resumes_exactly(tmp_path, cfg, whole, at, read=curves):
    """Runs cfg as "cut" to step `at`, then resumed to its end: its curves (read from the run
    directory; the routing's by default) are `whole`'s (the uninterrupted run's) bit for bit."""
    p = train("--config", cfg, "--run.name", "cut", "--train.steps", at)
    assert p.returncode == 0, p.stdout + p.stderr
    p = train("--config", cfg, "--run.name", "cut")
    assert p.returncode == 0 and "resumed from" in p.stdout + p.stderr, p.stdout + p.stderr
    resumed = read(tmp_path / "runs" / "cut")
    for k in whole:
        np.testing.assert_array_equal(resumed[k], whole[k], err_msg=k)


def test_moe_trains_alike_on_every_grid(tmp_path):
    cfg = tiny_config(tmp_path, name="one", train__steps=6, eval__every=0, checkpoint__every=0,
                      data__shuffle="false", **MOE)
    p = run(1, "--config", cfg)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "moe aux" in p.stdout
    want = curves(tmp_path / "runs" / "one")
    assert np.all(np.isfinite(want["moe_aux_loss"])) and np.all(want["moe_max_load"] >= 1)
    follows_one_rank(tmp_path, cfg, want, ((2, ["--parallel.tp", 2]),
                                           (2, ["--parallel.tp", 2, "--parallel.sequence_parallel",
                                                "true"]),
                                           (2, ["--parallel.pp", 2]),
                                           (2, ["--parallel.zero", 1]),
                                           (2, ["--parallel.zero", 2]),
                                           (2, ["--parallel.zero", 3]),
                                           (1, ["--train.recompute", "full"])))
    # Context parallelism balances each rank's own pieces of the sequences (its rows' f and P,
    # as Megatron's), another objective: without the term, the same curve.
    for n, grid, name in ((1, [], "plain"), (2, ["--parallel.cp", 2], "cp")):
        p = run(n, "--config", cfg, "--run.name", name, "--train.moe_aux_loss", 0, *grid)
        assert p.returncode == 0, name + p.stdout + p.stderr
    want, got = curves(tmp_path / "runs" / "plain"), curves(tmp_path / "runs" / "cp")
    for k in ("loss", "grad_norm", "moe_z_loss"):  # the z-loss is each row's own
        np.testing.assert_allclose(got[k], want[k], rtol=3e-5, err_msg=f"cp {k}")


def test_gated_shared_experts_train_alike_on_every_grid(tmp_path):
    """model.moe_shared_gate (Qwen2-MoE's sigmoid gate of the shared experts' output; PyTorch
    checks its math: test_reference_model.py's qwen2moe case): the one rank's curves on tp 2
    with sequence parallelism (the gate's gradient summed over the group, its input gradient
    formed once), pp 2, ep 2 and ZeRO-1; a checkpoint records the gate, and a config without it
    is refused; the gate without shared experts is refused."""
    cfg = tiny_config(tmp_path, name="one", train__steps=5, eval__every=0, checkpoint__every=5,
                      data__shuffle="false", model__moe_shared_gate="true", **MOE)
    p = run(1, "--config", cfg)
    assert p.returncode == 0, p.stdout + p.stderr
    want = curves(tmp_path / "runs" / "one")
    follows_one_rank(tmp_path, cfg, want,
                     ((2, ["--parallel.tp", 2, "--parallel.sequence_parallel", "true"]),
                      (2, ["--parallel.pp", 2]), (2, ["--parallel.ep", 2]),
                      (2, ["--parallel.zero", 1])), "--checkpoint.every", 0)
    ckpt = tmp_path / "runs" / "one" / "ckpt" / "step_00000005.h5"
    with h5py.File(ckpt, "r") as f:
        assert int(f["model"].attrs["moe_shared_gate"]) == 1
        assert f["model/h/1/mlp/shared/gate/weight"].shape == (1, 32)
    assert tool("triad-ckpt", ckpt).returncode == 0
    p = train("--config", cfg, "--eval-only", "--init-from", ckpt, "--model.moe_shared_gate",
              "false")
    assert_clean_error(p, "with a gate of its shared experts", "model.moe_shared_gate = false")
    p = train("--config", cfg, "--model.moe_shared_hidden", 0)
    assert_clean_error(p, "model.moe_shared_gate", "model.moe_shared_hidden > 0")


def val_losses(path):
    with h5py.File(path / "metrics.h5", "r") as f:
        return f["val"]["loss"][:]


def test_expert_parallelism_trains_alike_and_its_checkpoints_reshard(tmp_path):
    """parallel.ep: groups of ep data-parallel ranks hold 1/ep of every layer's experts each and
    send each token's rows to the ranks of its experts. Micro-batches of 2 sequences on every grid
    (the load-balancing term is each micro-batch's); 10 validation sequences leave some ranks
    without a batch in the last round, which must still join the exchanges."""
    common = dict(train__steps=6, train__micro_batch_size=2, eval__every=3, eval__sequences=10,
                  checkpoint__every=3, data__shuffle="false", train__moe_load_every=1,
                  train__norms_every=2, **MOE)
    cfg = tiny_config(tmp_path, name="one", **common)
    p = run(1, "--config", cfg)
    assert p.returncode == 0, p.stdout + p.stderr
    want, want_val = curves(tmp_path / "runs" / "one"), val_losses(tmp_path / "runs" / "one")
    want_norms = layer_norms(tmp_path / "runs" / "one")
    # Each expert's share of every step's choices (train.moe_load_every = 1): 2 layers of 4. The
    # busiest expert's load is the mean over micro-batches (4 of 2 sequences) of E·its share.
    assert want["moe_load"].shape == (6, 2, 4)
    np.testing.assert_allclose(want["moe_load"].sum(-1), 1.0, rtol=1e-12)
    assert np.all(4 * want["moe_load"].max(-1).mean(-1) <= want["moe_max_load"] + 1e-12)
    for n, grid in ((2, ["--parallel.ep", 2]),
                    (4, ["--parallel.ep", 2]),
                    (4, ["--parallel.ep", 4]),
                    (4, ["--parallel.ep", 2, "--parallel.pp", 2]),
                    (2, ["--parallel.ep", 2, "--parallel.zero", 1]),
                    (4, ["--parallel.ep", 2, "--parallel.zero", 1]),
                    (4, ["--parallel.ep", 2, "--parallel.zero", 2]),
                    (2, ["--parallel.ep", 2, "--parallel.zero", 3]),
                    (4, ["--parallel.ep", 2, "--parallel.zero", 3]),
                    (4, ["--parallel.ep", 2, "--parallel.pp", 2, "--parallel.zero", 1]),
                    (4, ["--parallel.ep", 2, "--parallel.tp", 2]),
                    (4, ["--parallel.ep", 2, "--parallel.tp", 2, "--parallel.sequence_parallel",
                         "true", "--parallel.zero", 1]),
                    (4, ["--parallel.ep", 2, "--parallel.tp", 2, "--parallel.sequence_parallel",
                         "true", "--parallel.zero", 3]),
                    (4, ["--parallel.ep", 2, "--parallel.cp", 2, "--train.moe_aux_loss", 0]),
                    (2, ["--parallel.ep", 2, "--train.recompute", "full"])):
        name = f"ep{n}_" + "_".join(k.split(".")[-1] + str(v) for k, v in zip(grid[::2], grid[1::2]))
        p = run(n, "--config", cfg, "--run.name", name, *grid)
        assert p.returncode == 0, name + p.stdout + p.stderr
        if "--parallel.cp" in grid:  # each rank balances its own rows: compared without the term
            continue
        got = curves(tmp_path / "runs" / name)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=3e-5, err_msg=f"{name} {k}")
        np.testing.assert_allclose(val_losses(tmp_path / "runs" / name), want_val, rtol=1e-5,
                                   err_msg=name)
        # Each layer's gradient and weight norms (train.norms_every), the experts' from the
        # slices that hold them.
        got_norms = layer_norms(tmp_path / "runs" / name)
        for k in want_norms:
            np.testing.assert_allclose(got_norms[k], want_norms[k], rtol=3e-5,
                                       err_msg=f"{name} {k}")
    # Context parallelism against one rank, both without the balancing term.
    p = run(1, "--config", cfg, "--run.name", "one_noaux", "--train.moe_aux_loss", 0)
    assert p.returncode == 0, p.stdout + p.stderr
    got = curves(tmp_path / "runs" / "ep4_ep2_cp2_moe_aux_loss0")
    plain = curves(tmp_path / "runs" / "one_noaux")
    for k in ("loss", "grad_norm", "moe_z_loss"):
        np.testing.assert_allclose(got[k], plain[k], rtol=3e-5, err_msg=f"ep with cp {k}")
    # bf16 rows travel as bf16 (measured: 1e-5 from one rank's bf16 run over 6 steps).
    for n, grid, name in ((1, [], "one_bf16"), (4, ["--parallel.ep", 4], "ep_bf16"),
                          (4, ["--parallel.ep", 2, "--parallel.zero", 1], "ep_bf16_zero"),
                          (4, ["--parallel.ep", 2, "--parallel.zero", 3], "ep_bf16_zero3")):
        p = run(n, "--config", cfg, "--run.name", name, "--run.precision", "bf16", *grid)
        assert p.returncode == 0, name + p.stdout + p.stderr
    for name in ("ep_bf16", "ep_bf16_zero", "ep_bf16_zero3"):
        np.testing.assert_allclose(curves(tmp_path / "runs" / name)["loss"],
                                   curves(tmp_path / "runs" / "one_bf16")["loss"], rtol=5e-5,
                                   err_msg=name)
    # The checkpoint holds every expert whole; ep = 2's resumes on one rank, one rank's at ep = 2,
    # and ep = 2's at ep = 2 bit for bit.
    ep_ckpt = tmp_path / "runs" / "ep2_ep2" / "ckpt" / "step_00000003.h5"
    with h5py.File(ep_ckpt, "r") as f:
        assert f["model/h/1/mlp/experts/c_fc/weight"].shape == (4, 64, 32)
        assert f["optimizer/m/h/1/mlp/experts/c_proj/weight"].shape == (4, 32, 64)
    with h5py.File(ep_ckpt, "r") as a, h5py.File(
            tmp_path / "runs" / "one" / "ckpt" / "step_00000003.h5", "r") as b:
        np.testing.assert_allclose(a["model/h/0/mlp/experts/c_fc/weight"][:],
                                   b["model/h/0/mlp/experts/c_fc/weight"][:], rtol=1e-4,
                                   atol=1e-6)
    exact = curves(tmp_path / "runs" / "ep2_ep2")
    zero_ckpt = tmp_path / "runs" / "ep4_ep2_zero1" / "ckpt" / "step_00000003.h5"
    exact_zero = curves(tmp_path / "runs" / "ep4_ep2_zero1")
    tp_ckpt = tmp_path / "runs" / "ep4_ep2_tp2" / "ckpt" / "step_00000003.h5"
    # ZeRO-3 writes the experts from their packed slices and reads them back there.
    zero3 = ["--parallel.ep", 2, "--parallel.zero", 3]
    zero3_ckpt = tmp_path / "runs" / "ep4_ep2_zero3" / "ckpt" / "step_00000003.h5"
    for n, ckpt, grid, name, ref, rtol in (
            (4, zero_ckpt, ["--parallel.ep", 2, "--parallel.zero", 1], "same_ep_zero", exact_zero,
             0),
            (1, zero_ckpt, [], "zero_to_one", want, 3e-5),
            (4, zero3_ckpt, zero3, "same_ep_zero3",
             curves(tmp_path / "runs" / "ep4_ep2_zero3"), 0),
            (1, zero3_ckpt, [], "zero3_to_one", want, 3e-5),
            (4, zero_ckpt, zero3, "zero1_to_zero3", want, 3e-5),
            (1, tp_ckpt, [], "tp_to_one", want, 3e-5),
            (4, tp_ckpt, ["--parallel.ep", 2, "--parallel.tp", 2], "same_tp", curves(
                tmp_path / "runs" / "ep4_ep2_tp2"), 0),
            (1, ep_ckpt, [], "to_one", want, 3e-5),
            (2, tmp_path / "runs" / "one" / "ckpt" / "step_00000003.h5", ["--parallel.ep", 2],
             "to_ep", want, 3e-5),
            (2, ep_ckpt, ["--parallel.ep", 2], "same_ep", exact, 0)):
        p = run(n, "--config", cfg, "--run.name", name, "--resume", ckpt, *grid)
        assert p.returncode == 0, name + p.stdout + p.stderr
        got = curves(tmp_path / "runs" / name)
        for k in want:
            if rtol == 0:
                np.testing.assert_array_equal(got[k][-3:], ref[k][3:], err_msg=f"{name} {k}")
            else:
                np.testing.assert_allclose(got[k][-3:], ref[k][3:], rtol=rtol,
                                           err_msg=f"{name} {k}")


def test_frozen_experts_under_zero3_expert_parallelism(tmp_path):
    """train.freeze with expert parallelism under ZeRO-3: frozen experts (their packed slices
    unchanged, no expert optimizer) and frozen dense layers beside trained experts follow one
    rank's curves, and a frozen expert tensor leaves the run as it came in."""
    cfg = tiny_config(tmp_path, name="one", train__steps=4, train__micro_batch_size=2,
                      eval__every=0, checkpoint__every=4, data__shuffle="false", **MOE)
    for freeze in ("h/*/mlp/experts/*", "h/0/*,wte/*"):
        tag = "experts" if "experts" in freeze else "dense"
        p = run(1, "--config", cfg, "--run.name", f"one_{tag}", "--train.freeze", freeze)
        assert p.returncode == 0, p.stdout + p.stderr
        want = curves(tmp_path / "runs" / f"one_{tag}")
        p = run(4, "--config", cfg, "--run.name", f"ep_{tag}", "--train.freeze", freeze,
                "--parallel.ep", 2, "--parallel.zero", 3)
        assert p.returncode == 0, p.stdout + p.stderr
        got = curves(tmp_path / "runs" / f"ep_{tag}")
        for k in ("loss", "grad_norm", "moe_aux_loss"):
            np.testing.assert_allclose(got[k], want[k], rtol=3e-5, err_msg=f"{tag} {k}")
    with h5py.File(tmp_path / "runs" / "one_experts" / "ckpt" / "step_00000004.h5", "r") as a, \
            h5py.File(tmp_path / "runs" / "ep_experts" / "ckpt" / "step_00000004.h5", "r") as b:
        np.testing.assert_array_equal(a["model/h/1/mlp/experts/c_fc/weight"][()],
                                      b["model/h/1/mlp/experts/c_fc/weight"][()])


def test_sequence_wise_balance_alike_on_every_grid(tmp_path):
    """train.moe_aux_scope = sequence (DeepSeek-V3's sequence-wise balance loss; its math against
    PyTorch in test_reference_model.py): one rank's curves on tp 2 with sequence parallelism,
    pp 2 under zb-h1 (the router's gradient in the weight pass), ep 2 with ZeRO-3 and full
    recomputation; and under context parallelism, where each sequence's counts and sums come
    from both of its ranks, the one rank's loss, gradient norm and balance term too (the
    micro-batch term balances each rank's rows there). The micro-batch term's curve differs."""
    cfg = tiny_config(tmp_path, name="one", train__steps=5, train__micro_batch_size=2,
                      eval__every=0, checkpoint__every=0, data__shuffle="false",
                      train__moe_aux_scope="sequence", **dict(MOE, train__moe_aux_loss=0.1))
    one = run_curves(tmp_path, 1, cfg, "one")
    batch = run_curves(tmp_path, 1, cfg, "batch", "--train.moe_aux_scope", "micro_batch")
    assert np.max(np.abs(batch["loss"] - one["loss"])) > 1e-5
    assert np.max(np.abs(batch["moe_aux_loss"] - one["moe_aux_loss"])) > 1e-4
    follows_one_rank(tmp_path, cfg, one,
                     ((2, ["--parallel.tp", 2, "--parallel.sequence_parallel", "true"]),
                      (2, ["--parallel.pp", 2, "--parallel.schedule", "zb-h1"]),
                      (4, ["--parallel.ep", 2, "--parallel.zero", 3]),
                      (2, ["--train.recompute", "full"])))
    p = run(2, "--config", cfg, "--run.name", "cp2", "--parallel.cp", 2)
    assert p.returncode == 0, p.stdout + p.stderr
    got = curves(tmp_path / "runs" / "cp2")
    for k in ("loss", "grad_norm", "moe_aux_loss", "moe_z_loss"):
        np.testing.assert_allclose(got[k], one[k], rtol=3e-5, err_msg=f"cp 2 {k}")


def test_samples_under_expert_parallelism_are_one_ranks(tmp_path):
    """In-training samples with parallel.ep: the ranks of replica 0's expert-parallel group decode
    together (each routes the same rows); greedy samples equal the single rank's, with tensor
    parallelism too, and under ZeRO-3 (where every rank decodes: the weight gathers are
    collective)."""
    common = ["--train.steps", 4, "--eval.every", 2, "--sample.length", 12, "--sample.top_k", 1,
              "--data.vocab", VOCAB, "--train.micro_batch_size", 2]
    cfg = tiny_config(tmp_path, name="one", vocab=50257, data__shuffle="false", **MOE)
    p = run(1, "--config", cfg, *common)
    assert p.returncode == 0, p.stdout + p.stderr
    one = (tmp_path / "runs" / "one" / "samples.txt").read_bytes()  # bytes: any tokens
    assert one.count(b"=== step") == 3
    for n, grid, name in ((2, ["--parallel.ep", 2], "ep2"),
                          (4, ["--parallel.ep", 2, "--parallel.tp", 2], "ep4"),
                          (4, ["--parallel.ep", 2, "--parallel.zero", 3], "ep4_zero3")):
        p = run(n, "--config", cfg, "--run.name", name, *grid, *common)
        assert p.returncode == 0, name + p.stdout + p.stderr
        assert (tmp_path / "runs" / name / "samples.txt").read_bytes() == one, name


def test_capacity_drops_alike_on_every_grid(tmp_path):
    """model.moe_capacity_factor: each expert takes at most ceil(f·N·k/E) of a rank's micro-batch
    choices; under expert parallelism only those travel, and the experts' buffers shrink to
    E·ceil(f·N·k/E) rows. The same curves and fraction dropped as one rank on every grid (the
    model itself against PyTorch: test_reference_model.py)."""
    cfg = tiny_config(tmp_path, name="one", train__steps=6, train__micro_batch_size=2,
                      eval__every=3, eval__sequences=10, checkpoint__every=0,
                      data__shuffle="false", model__moe_capacity_factor=0.75, **MOE)
    p = run(1, "--config", cfg)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "dropped" in p.stdout
    want, want_val = curves(tmp_path / "runs" / "one"), val_losses(tmp_path / "runs" / "one")
    with h5py.File(tmp_path / "runs" / "one" / "metrics.h5", "r") as f:
        dropped = f["train"]["moe_dropped"][:]
    assert np.all(dropped > 0.01) and np.all(dropped < 0.5), dropped
    for name in follows_one_rank(tmp_path, cfg, want,
                                 ((2, ["--parallel.ep", 2]), (4, ["--parallel.ep", 4]),
                                  (4, ["--parallel.ep", 2, "--parallel.zero", 1]),
                                  (2, ["--parallel.zero", 1]), (2, ["--parallel.tp", 2]),
                                  (2, ["--parallel.ep", 2, "--train.recompute", "full"]))):
        with h5py.File(tmp_path / "runs" / name / "metrics.h5", "r") as f:
            np.testing.assert_array_equal(f["train"]["moe_dropped"][:], dropped, err_msg=name)
        np.testing.assert_allclose(val_losses(tmp_path / "runs" / name), want_val, rtol=1e-5,
                                   err_msg=name)


def test_dense_layers_among_the_experts_train_alike_on_every_grid(tmp_path):
    """model.moe_first_dense = 1: layer 0 keeps its dense MLP (a pipeline's first stage has no
    experts, its second does), 192 units wide beside experts of 64 (model.moe_dense_hidden:
    DeepSeek's wider first layers; its buffers larger than the experts' 2 rows of 64 per token,
    so the scratch full and gelu recomputation share, and the zero-bubble weight pass's kept
    gradients, are sized for it)."""
    cfg = tiny_config(tmp_path, name="one", train__steps=6, eval__every=0, checkpoint__every=3,
                      data__shuffle="false", model__moe_first_dense=1,
                      model__moe_dense_hidden=192, **MOE)
    p = run(1, "--config", cfg)
    assert p.returncode == 0, p.stdout + p.stderr
    want = curves(tmp_path / "runs" / "one")
    follows_one_rank(tmp_path, cfg, want, ((2, ["--parallel.pp", 2]), (2, ["--parallel.tp", 2]),
                                           (2, ["--parallel.zero", 2]),
                                           (2, ["--parallel.zero", 3]),
                                           (1, ["--train.recompute", "full"]),
                                           (1, ["--train.recompute", "gelu"]),
                                           (2, ["--parallel.pp", 2, "--parallel.schedule",
                                                "zb-h1"])))
    ckpt = tmp_path / "runs" / "one" / "ckpt" / "step_00000006.h5"
    with h5py.File(ckpt, "r") as f:
        assert f["model/h/0/mlp/c_fc/weight"].shape == (192, 32)
        assert f["model/h/1/mlp/experts/c_fc/weight"].shape == (4, 64, 32)
        assert "h/0/mlp/router" not in f["model"] and "h/1/mlp/router/weight" in f["model"]
        assert (f["model"].attrs["moe_first_dense"], f["model"].attrs["moe_every"]) == (1, 1)
        assert f["model"].attrs["moe_dense_hidden"] == 192
    p = tool("triad-ckpt", ckpt)
    assert p.returncode == 0, p.stdout + p.stderr
    p = train("--config", cfg, "--resume", ckpt, "--model.moe_first_dense", 0,
              "--model.moe_dense_hidden", 0, "--train.steps", 8)
    assert_clean_error(p, "model.moe_first_dense = 0")
    p = train("--config", cfg, "--resume", ckpt, "--model.moe_dense_hidden", 0, "--train.steps", 8)
    assert_clean_error(p, "model.moe_dense_hidden = 0")


def test_moe_resume_is_bit_exact_and_checkpoint_holds_the_routing(tmp_path):
    cfg = tiny_config(tmp_path, name="whole", train__steps=8, eval__every=0, checkpoint__every=4,
                      train__moe_load_every=2, **MOE)
    p = train("--config", cfg)
    assert p.returncode == 0, p.stdout + p.stderr
    whole = curves(tmp_path / "runs" / "whole")
    cut = tiny_config(tmp_path, name="cut", train__steps=8, eval__every=0, checkpoint__every=4,
                      train__moe_load_every=2, **MOE)
    p = train("--config", cut, "--train.steps", 4)
    assert p.returncode == 0, p.stdout + p.stderr
    p = train("--config", cut)
    assert p.returncode == 0, p.stdout + p.stderr
    resumed = curves(tmp_path / "runs" / "cut")
    assert whole["moe_load"].shape == (4, 2, 4)  # steps 0, 2, 4, 6
    # triad-plot-moe draws them (and says plainly when a run has none).
    out = tmp_path / "moe_load.png"
    p = tool("triad-plot-moe", tmp_path / "runs" / "cut", "--out", out)
    assert p.returncode == 0 and p.stdout.strip() == str(out), p.stdout + p.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20000
    plain = tiny_config(tmp_path, name="plain", train__steps=2, eval__every=0, **MOE)
    assert train("--config", plain).returncode == 0
    assert_clean_failure(tool("triad-plot-moe", tmp_path / "runs" / "plain", "--out", out),
                         "no /moe_load group", "train.moe_load_every")
    for k in whole:
        np.testing.assert_array_equal(resumed[k], whole[k], err_msg=k)
    ckpt = tmp_path / "runs" / "whole" / "ckpt" / "step_00000008.h5"
    with h5py.File(ckpt, "r") as f:
        a = f["model"].attrs
        assert (a["moe_experts"], a["moe_top_k"], a["moe_normalize"]) == (4, 2, 1)
        assert f["model/h/1/mlp/experts/c_fc/weight"].shape == (4, 64, 32)
        assert f["model/h/1/mlp/experts/c_proj/weight"].shape == (4, 32, 64)
        assert f["model/h/1/mlp/router/weight"].shape == (4, 32)
        assert f["model/h/1/mlp/shared/c_fc/weight"].shape == (32, 32)
        assert a["moe_shared_hidden"] == 32
        assert "h/1/mlp/c_fc/weight" not in f["model"]
    p = train("--config", cfg, "--resume", ckpt, "--model.moe_top_k", 3, "--train.steps", 9)
    assert_clean_error(p, "moe_top_k = 3", str(ckpt))
    # The checkpoint verifies against the expected tensors, generates, and is not exported to
    # the dense formats.
    p = tool("triad-ckpt", ckpt)
    assert p.returncode == 0, p.stdout + p.stderr
    g = subprocess.run([exe("triad-generate"), "--checkpoint", ckpt, "--prompt-ids", "1 2 3",
                        "--length", "4", "--output", "ids"], capture_output=True, text=True)
    assert g.returncode == 0 and len(g.stdout.split()) == 4, g.stdout + g.stderr
    assert_clean_failure(tool("triad-convert", "export", ckpt, tmp_path / "hf", "--to", "hf"),
                         "mixtures of 4 experts")


def test_moe_biases_train_resume_exactly_and_must_agree(tmp_path):
    """model.moe_bias (gpt-oss's): the router's and the experts' biases start at 0, train (no
    weight decay keeps them at 0 either way: they move), resume bit for bit, sit in the checkpoint
    in their shapes beside the moe_bias attribute, and a config without them is refused there.
    (Their values against PyTorch: test_reference_model's gptoss case; across grids:
    test_model_parallel's GptOssBlocks.)"""
    cfg = tiny_config(tmp_path, name="whole", train__steps=8, eval__every=0, checkpoint__every=4,
                      data__shuffle="false", model__moe_bias="true", model__mlp="swiglu", **MOE)
    p = train("--config", cfg)
    assert p.returncode == 0, p.stdout + p.stderr
    whole = curves(tmp_path / "runs" / "whole")
    resumes_exactly(tmp_path, cfg, whole, 4)
    ckpt = tmp_path / "runs" / "whole" / "ckpt" / "step_00000008.h5"
    with h5py.File(ckpt, "r") as f:
        assert f["model"].attrs["moe_bias"] == 1
        got = {k: f["model/h/1/mlp/" + k][()] for k in
               ("experts/c_fc/bias", "experts/c_proj/bias", "router/bias")}
        assert "h/1/mlp/shared/c_fc/bias" not in f["model"]  # the shared experts keep none
    assert got["experts/c_fc/bias"].shape == (4, 128) and got["router/bias"].shape == (4,)
    assert got["experts/c_proj/bias"].shape == (4, 32)
    for k, v in got.items():
        assert np.all(np.isfinite(v)) and np.count_nonzero(v) > v.size // 2, k
    assert tool("triad-ckpt", ckpt).returncode == 0
    p = train("--config", cfg, "--resume", ckpt, "--model.moe_bias", "false",
              "--train.steps", 9)
    assert_clean_error(p, "model.moe_bias = false", str(ckpt))
    bad = tmp_path / "bad_moe_bias.h5"  # a damaged attribute, refused by name
    bad.write_bytes(ckpt.read_bytes())
    with h5py.File(bad, "r+") as f:
        f["model"].attrs["moe_bias"] = 2
    p = train("--config", cfg, "--resume", bad, "--train.steps", 9)
    assert_clean_error(p, "attribute moe_bias of /model is 2, not 0 or 1", str(bad))


DSV3 = dict(MOE, train__moe_z_loss=0.0, model__moe_score="sigmoid", model__moe_routed_scale=2.5,
            model__moe_experts=8, model__moe_groups=4, model__moe_group_top_k=2,
            train__moe_bias_rate=0.01, train__moe_load_every=1)


def test_deepseek_v3_balancing_trains_alike_resumes_exactly_and_samples(tmp_path):
    """8 experts in 4 groups, each token's 2 from its 2 best groups. The routers' biases move
    alike on every grid (each rank counts its rows' choices, the
    tensor-parallel ranks once), are saved with the weights and restored by a resume, whose
    curves (loss, gradient norm, loads) are the uninterrupted run's bit for bit."""
    cfg = tiny_config(tmp_path, name="whole", train__steps=8, eval__every=0, checkpoint__every=4,
                      data__shuffle="false", **DSV3)
    p = train("--config", cfg)
    assert p.returncode == 0, p.stdout + p.stderr
    whole = curves(tmp_path / "runs" / "whole")
    follows_one_rank(tmp_path, cfg, whole, ((2, ["--parallel.tp", 2]), (2, ["--parallel.pp", 2]),
                                            (2, ["--parallel.zero", 1])))
    resumes_exactly(tmp_path, cfg, whole, 4)
    ckpt = tmp_path / "runs" / "whole" / "ckpt" / "step_00000008.h5"
    with h5py.File(ckpt, "r") as f:
        a = f["model"].attrs
        assert a["moe_score"] in (b"sigmoid", "sigmoid") and a["moe_routed_scale"] == 2.5
        assert (a["moe_groups"], a["moe_group_top_k"]) == (4, 2)
        bias = {k: f["router_bias/h"][k][()] for k in f["router_bias/h"]}
    assert sorted(bias) == ["0", "1"] and all(b.shape == (8,) for b in bias.values())
    # DeepSeek-V3's rule replayed from the logged loads (each step's share of every expert):
    # +0.01 below the mean share (1/8), −0.01 above, in fp32 step by step.
    want = np.zeros((2, 8), dtype=np.float32)
    for share in whole["moe_load"]:  # [layers, experts] of each step
        want += (np.float32(0.01) * np.sign(0.125 - share)).astype(np.float32)
    np.testing.assert_array_equal(np.stack([bias["0"], bias["1"]]), want)
    assert np.any(want != 0), want
    p = train("--config", cfg, "--resume", ckpt, "--model.moe_score", "softmax",
              "--train.moe_bias_rate", 0, "--train.steps", 9)
    assert_clean_error(p, "model.moe_score = softmax", str(ckpt))
    g = subprocess.run([exe("triad-generate"), "--checkpoint", ckpt, "--prompt-ids", "1 2 3",
                        "--length", "4", "--output", "ids"], capture_output=True, text=True)
    assert g.returncode == 0 and len(g.stdout.split()) == 4, g.stdout + g.stderr
    assert_clean_failure(tool("triad-convert", "export", ckpt, tmp_path / "hf", "--to", "hf"),
                         "DeepSeek-V3's routing")


def test_muon_on_the_experts_trains_alike_on_every_grid_and_resumes_exactly(tmp_path):
    """optim.name = muon with a mixture of experts: each expert's c_fc and c_proj orthogonalized
    on its own, the shared experts' too (PyTorch checks the values: test_reference_model.py's
    Muon cases). Experts of 16 units, so c_proj [32, 16] is tall, and under tp split by columns
    (laid out row by row for Newton–Schulz), as the dense first layer's. The one rank's curves on
    tp 2, pp 2, ZeRO-1, 2 and 3, and ep 2 on dp 2 and dp 4 (whose expert replicas share the
    experts' Newton–Schulz out, with and without ZeRO-1, under ZeRO-3 from the packed experts'
    slices, and with tp 2); a resumed run continues
    bit for bit, the experts' momentum in the checkpoint."""
    cfg = tiny_config(tmp_path, name="whole", train__steps=6, train__micro_batch_size=2,
                      eval__every=0, checkpoint__every=3, data__shuffle="false",
                      optim__name="muon", optim__muon_lr=0.02,
                      **dict(MOE, model__mlp_hidden=16, model__moe_first_dense=1))
    p = train("--config", cfg)
    assert p.returncode == 0, p.stdout + p.stderr
    whole = curves(tmp_path / "runs" / "whole")
    follows_one_rank(tmp_path, cfg, whole,
                     ((2, ["--parallel.tp", 2]), (2, ["--parallel.pp", 2]),
                      (2, ["--parallel.zero", 1]), (2, ["--parallel.zero", 2]),
                      (2, ["--parallel.zero", 3]), (2, ["--parallel.ep", 2]),
                      (4, ["--parallel.ep", 2]), (4, ["--parallel.ep", 2, "--parallel.zero", 1]),
                      (4, ["--parallel.ep", 2, "--parallel.zero", 3]),
                      (4, ["--parallel.ep", 2, "--parallel.tp", 2])),
                     "--checkpoint.every", 0)
    with h5py.File(tmp_path / "runs" / "whole" / "ckpt" / "step_00000006.h5", "r") as f:
        mom = f["optimizer/momentum/h/1/mlp/experts/c_proj/weight"][()]
        assert mom.shape == (4, 32, 16) and np.all(np.any(mom != 0, axis=(1, 2))), mom.shape
        assert "h/1/mlp/router/weight" in f["optimizer/m"] and \
            "h/1/mlp/experts/c_fc/weight" not in f["optimizer/m"]
    resumes_exactly(tmp_path, cfg, whole, 3)


def test_mup_mixture_trains_alike_on_every_grid(tmp_path):
    """μP (model.mup_base_width = 8: m = 4) with experts (PyTorch checks its math:
    test_reference_model.py's μP cases): the router's and the shared gate's logits times 1/m on
    every rank, the experts' matrices at lr / m; the one rank's curves on tp 2 with sequence
    parallelism, ep 2, ZeRO-1 and zb-h1, and a curve other than the standard parametrization's."""
    cfg = tiny_config(tmp_path, name="one", train__steps=5, train__micro_batch_size=2,
                      eval__every=0, checkpoint__every=0, data__shuffle="false",
                      model__mup_base_width=8, model__moe_shared_gate="true", **MOE)
    p = run(1, "--config", cfg)
    assert p.returncode == 0, p.stdout + p.stderr
    one = curves(tmp_path / "runs" / "one")
    p = run(1, "--config", cfg, "--run.name", "sp", "--model.mup_base_width", 0)
    assert p.returncode == 0, p.stdout + p.stderr
    assert np.max(np.abs(curves(tmp_path / "runs" / "sp")["loss"] - one["loss"])) > 1e-4
    follows_one_rank(tmp_path, cfg, one,
                     ((2, ["--parallel.tp", 2, "--parallel.sequence_parallel", "true"]),
                      (2, ["--parallel.ep", 2]), (2, ["--parallel.zero", 1]),
                      (2, ["--parallel.pp", 2, "--parallel.schedule", "zb-h1"])))


def test_decay_schedule_and_rates_reach_the_expert_optimizer(tmp_path):
    """A cosine optim.weight_decay_schedule to a large end (the experts' matrices decay by it in
    the expert optimizer of ep 2 with ZeRO-1, whose slices are the experts' own), undecayed
    embeddings at a rate of their own: the one rank's curves on ep 2, ep 2 with ZeRO-1 and
    ZeRO-1, and a curve other than the constant decay's (PyTorch checks the math:
    test_reference_model.py)."""
    cfg = tiny_config(tmp_path, name="one", train__steps=5, train__micro_batch_size=2,
                      eval__every=0, checkpoint__every=0, data__shuffle="false",
                      optim__weight_decay_schedule="cosine", optim__weight_decay_end=3.0,
                      optim__decay_embeddings="false", optim__embedding_lr=0.01, **MOE)
    p = run(1, "--config", cfg)
    assert p.returncode == 0, p.stdout + p.stderr
    one = curves(tmp_path / "runs" / "one")
    p = run(1, "--config", cfg, "--run.name", "constant", "--optim.weight_decay_schedule",
            "constant", "--optim.weight_decay_end", 0)
    assert p.returncode == 0, p.stdout + p.stderr
    assert np.max(np.abs(curves(tmp_path / "runs" / "constant")["loss"] - one["loss"])) > 1e-5
    follows_one_rank(tmp_path, cfg, one,
                     ((2, ["--parallel.ep", 2]), (2, ["--parallel.ep", 2, "--parallel.zero", 1]),
                      (2, ["--parallel.zero", 1])))


def test_zero_bubble_schedules_split_the_experts_backward(tmp_path):
    """parallel.schedule = zb-h1 and zb-v with a mixture of experts: the input pass leaves the
    experts' output and pre-activation gradients (where their products ran, under expert
    parallelism too), the router's and the shared experts' (with their gate) in the activation
    set, and the weight pass forms the weight gradients from them. With a capacity that drops
    choices: on the CPU zb-h1's curves are 1F1B's bit for bit (the same products on the same
    values), also recomputing the activation; zb-v's, and zb-h1's with ep 2 and with tp 2 and
    sequence parallelism, one rank's within fp32 rounding."""
    cfg = tiny_config(tmp_path, name="one", train__steps=5, train__micro_batch_size=2,
                      eval__every=0, checkpoint__every=0, data__shuffle="false", model__n_layer=4,
                      model__moe_shared_gate="true", model__moe_capacity_factor=1.0,
                      train__moe_load_every=1, **MOE)
    p = run(1, "--config", cfg)
    assert p.returncode == 0, p.stdout + p.stderr
    one = curves(tmp_path / "runs" / "one")
    with h5py.File(tmp_path / "runs" / "one" / "metrics.h5", "r") as f:
        assert np.any(f["train"]["moe_dropped"][:] > 0), "the capacity should drop choices"
    f1b, zb, zbgelu = follows_one_rank(
        tmp_path, cfg, one, ((2, ["--parallel.pp", 2]),
                             (2, ["--parallel.pp", 2, "--parallel.schedule", "zb-h1"]),
                             (2, ["--parallel.pp", 2, "--parallel.schedule", "zb-h1",
                                  "--train.recompute", "gelu"])))
    want = curves(tmp_path / "runs" / f1b)
    for name in (zb, zbgelu):
        got = curves(tmp_path / "runs" / name)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"{name} {k}")
    # Shared experts without their gate: the weight pass reads their output's gradient where the
    # dense c_proj's would be.
    for schedule in ("1f1b", "zb-h1"):
        p = run(2, "--config", cfg, "--run.name", f"nogate-{schedule}", "--parallel.pp", 2,
                "--parallel.schedule", schedule, "--model.moe_shared_gate", "false")
        assert p.returncode == 0, p.stdout + p.stderr
    want, got = curves(tmp_path / "runs" / "nogate-1f1b"), curves(tmp_path / "runs" / "nogate-zb-h1")
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=f"no gate {k}")
    follows_one_rank(tmp_path, cfg, one,
                     ((2, ["--parallel.pp", 2, "--parallel.schedule", "zb-v",
                           "--parallel.virtual_stages", 2]),
                      (4, ["--parallel.pp", 2, "--parallel.schedule", "zb-h1", "--parallel.ep", 2]),
                      (4, ["--parallel.pp", 2, "--parallel.schedule", "zb-h1", "--parallel.tp", 2,
                           "--parallel.sequence_parallel", "true"])))


# Measured: FP8 moves one rank's curve by 9.7e-5 from the plain one; the grids stay within 2e-7
# of it (cp 1.7e-7, where the attention's sums differ in their last bits; tp, pp, ep 5e-9). A
# last-bit difference can move an operand across an FP8 rounding boundary (an e5m2 element by
# 25%): up to 1e-5 measured for the dense layers (test_model_parallel's Fp8MatchesOneRank...).
FP8_MOVES, FP8_GRID_RTOL = 2e-5, 1e-5


def test_fp8_experts_train_alike_on_every_grid(tmp_path):
    """run.fp8 = tensorwise with experts (on fp32 operands here): each expert's products at its
    own scales over the rows routed to it, the shared experts' as a dense MLP's, the router exact
    (PyTorch checks the gradients: test_fp8.py's moeswiglu case). The FP8 run leaves the plain
    one's curve; tp 2 with sequence parallelism (an expert's matrix split, its amax the maximum
    over the pieces), pp 2 under zb-h1 (the experts' weight pass in FP8), cp 2 (each expert's amax
    over both ranks' rows) and ep 2 (an expert's rows from both ranks of the group) give one
    rank's curve up to FP8's rounding flips; resumed, the run continues bit for bit (against the
    same launcher's whole run: the one-rank runs under mpirun keep one BLAS thread)."""
    fp8 = {**MOE, "train__moe_aux_loss": 0, "run__fp8": "tensorwise"}  # (cp: no balancing term)
    cfg = tiny_config(tmp_path, name="one", train__steps=6, eval__every=0, checkpoint__every=3,
                      data__shuffle="false", **fp8)
    want = run_curves(tmp_path, 1, cfg, "one")
    plain = run_curves(tmp_path, 1, cfg, "plain", "--run.fp8", "off")
    moved = np.abs(want["loss"] - plain["loss"]) / plain["loss"]
    print(f"\nFP8 against plain: largest loss difference {moved.max():.2e}")
    assert moved.max() > FP8_MOVES, "the experts' FP8 products change the run"
    for n, grid in ((2, ["--parallel.tp", 2, "--parallel.sequence_parallel", "true"]),
                    (2, ["--parallel.pp", 2, "--parallel.schedule", "zb-h1"]),
                    (2, ["--parallel.cp", 2]),
                    (2, ["--parallel.ep", 2])):
        name = "g_" + "_".join(map(str, grid)).replace("--", "").replace(".", "-")
        got = run_curves(tmp_path, n, cfg, name, *grid)
        worst = np.max(np.abs(got["loss"] - want["loss"]) / want["loss"])
        print(f"{name}: largest loss difference {worst:.2e}")
        np.testing.assert_allclose(got["loss"], want["loss"], rtol=FP8_GRID_RTOL, err_msg=name)
    p = train("--config", cfg, "--run.name", "whole")
    assert p.returncode == 0, p.stdout + p.stderr
    resumes_exactly(tmp_path, cfg, curves(tmp_path / "runs" / "whole"), 3)


def test_fp8_scales_span_the_ranks_holding_a_tensor(tmp_path):
    """run.fp8: the amax of a matrix split over the tensor-parallel ranks is the maximum over
    them, for an expert's products as for the dense layers', so every rank quantizes with the
    whole tensor's scale. A power-of-two scale changes an FP8 value only where it underflows
    (2^15 below the amax for e4m3): so outliers 5e5 times the weights are planted in tp rank 1's
    half of every expert's c_fc and c_proj and of attn.c_proj, which flush rank 0's half to zero
    at the whole tensor's scale and would not at its own. Measured: tp 2 follows one rank within
    4e-9; with each rank's own amax 1.8e-7 (the experts' products alone) and 8e-7 (the dense
    layers' alone), both at the first, forward-only loss: checked to 3e-8. (Context parallelism's
    maximum over the ranks' rows is not visible this way: normalized activations stay within a
    factor of √C of each other.)"""
    fp8 = {**MOE, "train__moe_aux_loss": 0, "run__fp8": "tensorwise"}
    cfg = tiny_config(tmp_path, name="init", train__steps=1, eval__every=0, checkpoint__every=1,
                      data__shuffle="false", **fp8)
    p = run(1, "--config", cfg)
    assert p.returncode == 0, p.stdout + p.stderr
    ckpt = tmp_path / "outliers.h5"
    shutil.copy(tmp_path / "runs" / "init" / "ckpt" / "step_00000001.h5", ckpt)
    with h5py.File(ckpt, "r+") as f:
        def plant(name, change):  # the tensor changed in place, its checksum with it
            ds = f["model"][name]
            a = ds[...]
            change(a)
            ds[...] = a
            ds.attrs["checksum"] = np.uint32(zlib.crc32(a.astype("<f4").tobytes()))

        # [E, F, C]: the last c_fc row and [E, C, H] the last hidden column are tp rank 1's, as
        # [C, A]'s last input column (weights ~N(0, 0.02)).
        for h in ("h/0/", "h/1/"):
            plant(h + "mlp/experts/c_fc/weight", lambda a: a.__setitem__((slice(None), -1, 0), 1e4))
            plant(h + "mlp/experts/c_proj/weight", lambda a: a.__setitem__((slice(None), 0, -1), 1e4))
            plant(h + "attn/c_proj/weight", lambda a: a.__setitem__((0, -1), 1e4))
    runs = {}
    for n, grid in ((1, []), (2, ["--parallel.tp", 2])):
        name = "o_" + "_".join(map(str, grid)).replace("--", "").replace(".", "-")
        runs[name] = run_curves(tmp_path, n, cfg, name, "--init-from", ckpt, "--train.steps", 3,
                                "--checkpoint.every", 0, *grid)["loss"]
    one = runs.pop("o_")
    for name, loss in runs.items():
        worst = np.max(np.abs(loss - one) / one)
        print(f"{name}: largest loss difference {worst:.2e}")
        np.testing.assert_allclose(loss, one, rtol=3e-8, err_msg=name)


def test_moe_refuses_what_it_cannot_run(tmp_path):
    cases = [({"model__moe_top_k": 5}, "model.moe_top_k"),
             ({"model__moe_experts": 513}, "model.moe_experts"),
             ({"train__moe_aux_loss": -1}, "train.moe_aux_loss"),
             ({"train__moe_z_loss": -1}, "train.moe_z_loss"),
             ({"run__fp8": "tensorwise", "model__moe_shared_hidden": 24},
              "the shared experts' c_fc outputs (24) to be a multiple of 16"),
             ({"model__moe_experts": 0}, "model.moe_shared_hidden"),
             ({"model__moe_first_dense": 2}, "model.moe_first_dense"),
             ({"model__moe_dense_hidden": 96}, "model.moe_dense_hidden"),
             ({"model__moe_dense_hidden": -1}, "model.moe_dense_hidden"),
             ({"model__moe_experts": 0, "model__moe_shared_hidden": 0,
               "train__moe_load_every": 1}, "train.moe_load_every"),
             ({"train__moe_load_every": -1}, "train.moe_load_every"),
             ({"model__moe_experts": 0, "model__moe_shared_hidden": 0, "model__moe_every": 2},
              "model.moe_first_dense"),
             ({"model__moe_top_k": 1}, "model.moe_normalize = true with model.moe_top_k = 1"),
             ({"model__moe_capacity_factor": -1}, "model.moe_capacity_factor"),
             ({"model__moe_experts": 0, "model__moe_shared_hidden": 0,
               "model__moe_capacity_factor": 1.0}, "model.moe_capacity_factor"),
             ({"model__moe_score": "tanh"}, 'model.moe_score must be softmax or sigmoid'),
             ({"model__moe_score": "sigmoid"}, "it needs model.moe_score = softmax"),
             ({"model__moe_routed_scale": 0}, "model.moe_routed_scale"),
             ({"train__moe_bias_rate": -0.001}, "train.moe_bias_rate"),
             ({"model__moe_groups": 3}, "model.moe_groups"),
             ({"model__moe_groups": 4}, "model.moe_groups"),
             ({"model__moe_groups": 2, "model__moe_group_top_k": 3}, "model.moe_group_top_k"),
             ({"model__moe_groups": 2, "model__moe_group_top_k": 1, "model__moe_top_k": 3},
              "model.moe_group_top_k"),
             ({"model__moe_group_top_k": 2}, "model.moe_group_top_k"),
             ({"model__moe_group_score": "best"}, 'model.moe_group_score must be top2 or max'),
             ({"model__moe_group_score": "max"}, "it needs model.moe_groups > 1"),
             ({"model__moe_groups": 2, "model__moe_group_top_k": 2, "model__moe_top_k": 5},
              "model.moe_top_k must be in [1, model.moe_experts = 4]"),
             ({"model__moe_experts": 0, "model__moe_shared_hidden": 0, "train__moe_z_loss": 0,
               "model__moe_score": "sigmoid"}, "model.moe_score = sigmoid scores a router"),
             ({"model__moe_experts": 0, "model__moe_shared_hidden": 0,
               "train__moe_bias_rate": 0.001}, "train.moe_bias_rate"),
             ({"train__moe_aux_scope": "tokens"},
              "train.moe_aux_scope must be micro_batch or sequence (got 'tokens')"),
             ({"model__moe_experts": 0, "model__moe_shared_hidden": 0, "train__moe_z_loss": 0,
               "train__moe_aux_scope": "sequence"},
              "train.moe_aux_scope = sequence needs model.moe_experts > 0")]
    for i, (over, words) in enumerate(cases):
        cfg = tiny_config(tmp_path, name=f"bad{i}", **{**MOE, **over})
        assert_clean_error(train("--config", cfg), words)
    # Expert parallelism: on every rank, one error naming the key.
    for n, over, words in (
            (3, {"parallel__ep": 3, "train__batch_size": 12}, "model.moe_experts (4)"),
            (2, {"parallel__ep": 4, "model__moe_experts": 8},
             "parallel.ep = 4 must divide the data-parallel size"),
            (2, {"parallel__ep": 0}, "parallel.ep must be >= 1"),
            (2, {"parallel__ep": 2, "model__moe_experts": 0, "model__moe_shared_hidden": 0},
             "needs a mixture of experts")):
        cfg = tiny_config(tmp_path, name="ep", **{**MOE, **over})
        p = run(n, "--config", cfg)
        assert p.returncode != 0, p.stdout
        assert words in p.stderr and "error" in p.stderr, p.stderr
        assert "Segmentation" not in p.stderr and "terminate called" not in p.stderr, p.stderr


def test_damaged_routing_attributes_of_a_checkpoint_are_refused(tmp_path):
    """A checkpoint whose /model attributes give an impossible routing: one error naming the
    attribute, on both ranks of an mpirun, and the file itself left as it was."""
    cfg = tiny_config(tmp_path, name="src", train__steps=2, eval__every=0, checkpoint__every=2,
                      **MOE)
    p = train("--config", cfg)
    assert p.returncode == 0, p.stdout + p.stderr
    good = tmp_path / "runs" / "src" / "ckpt" / "step_00000002.h5"
    for attr, value, words in (("moe_top_k", 9, "attribute moe_top_k of /model is 9"),
                               ("moe_every", 5, "leave no layer with experts"),
                               ("moe_experts", 513, "attribute moe_experts of /model is 513"),
                               ("moe_shared_gate", 2,
                                "attribute moe_shared_gate of /model is 2, not 0 or 1"),
                               ("moe_score", "tanh", 'attribute moe_score of /model is "tanh"'),
                               ("moe_routed_scale", -1.0,
                                "attribute moe_routed_scale of /model is -1"),
                               ("moe_groups", 3, "attributes moe_groups (3) and moe_group_top_k"),
                               ("moe_group_score", "max",
                                'attribute moe_group_score of /model is "max"')):
        bad = tmp_path / f"bad_{attr}.h5"
        bad.write_bytes(good.read_bytes())
        with h5py.File(bad, "r+") as f:
            f["model"].attrs[attr] = (np.bytes_(value) if isinstance(value, str) else value
                                      if isinstance(value, float) else np.int64(value))
        before = bad.read_bytes()
        p = run(2, "--config", cfg, "--run.name", f"from_{attr}", "--init-from", bad,
                "--parallel.zero", 1)
        assert p.returncode != 0, p.stdout
        assert words in p.stderr and "error" in p.stderr, p.stderr
        assert "Segmentation" not in p.stderr and "terminate called" not in p.stderr, p.stderr
        assert bad.read_bytes() == before


def test_moving_average_of_a_mixture_routes_as_its_checkpoint(tmp_path):
    """optim.ema_decay with DeepSeek-V3's balancing (train.moe_bias_rate): the model triad-average
    --ema writes out carries the checkpoint's routers' biases (no optimizer moves them), so it
    generates as triad-generate --ema from the checkpoint itself."""
    cfg = tiny_config(tmp_path, name="one", vocab=50257, train__steps=4, optim__ema_decay=0.5,
                      **DSV3)
    p = run(1, "--config", cfg)
    assert p.returncode == 0, p.stdout + p.stderr
    ckpt = tmp_path / "runs" / "one" / "ckpt" / "step_00000004.h5"
    out = tmp_path / "ema.h5"
    t = tool("triad-average", "--ema", ckpt, "--out", out)
    assert t.returncode == 0, t.stderr
    with h5py.File(ckpt, "r") as a, h5py.File(out, "r") as b:
        assert sorted(a["router_bias/h"]) == sorted(b["router_bias/h"])
        assert any(np.abs(a[f"router_bias/h/{k}"][:]).max() > 0 for k in a["router_bias/h"])
        for k in a["router_bias/h"]:
            np.testing.assert_array_equal(a[f"router_bias/h/{k}"][:], b[f"router_bias/h/{k}"][:])
    gen = [exe("triad-generate"), "--vocab", VOCAB, "--prompt-ids", "1 2 3", "--length", "5",
           "--output", "logprobs", "--logprobs", "3"]
    a = subprocess.run([*map(str, gen), "--checkpoint", str(ckpt), "--ema"], capture_output=True,
                       text=True, timeout=120)
    b = subprocess.run([*map(str, gen), "--checkpoint", str(out)], capture_output=True, text=True,
                       timeout=120)
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert a.stdout == b.stdout
