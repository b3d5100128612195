"""The vmapped sweep against its reference: each member trained alone by ``loop.fit``.

Tolerance of the vmapped members (float32). ``jax.vmap`` turns each member's matmuls
into batched ones, which XLA's CPU backend may tile and sum in another order than the
solo ``(B, H) @ (H, H)``; the results then differ in the last bits and the difference
travels through the steps. Measured here over 2 epochs (22 steps), both partitions and
3 members differing in seed, lr, theta and sigma: at most 2.4e-7 absolute in any
parameter and 5.7e-7 relative in any recorded perplexity or gradient norm (a few ulps).
The tests allow 2e-6 for both, about 4x above. Loop mode runs ``loop.fit`` itself and is
held bitwise equal to it; members of one vmapped program share no arithmetic, so a
diverging member leaves the others bitwise unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics

import jax
import numpy as np
import pytest

from rnn_jax import checkpoint, cli, input_pipeline, loop, run_folder, sweep
from rnn_jax.config import ModelConfig, TrainConfig

TOL = 2e-6  # see the module docstring: measured 2.4e-7 (params), 5.7e-7 (records)
CONFIG = TrainConfig(
    max_tokens=2000, batch_size=8, num_steps=10, num_epochs=2, sample_every=0, seed=0
)
HIDDENS = 16
VARIANTS = ((0, 1.0, 1.0, 0.01), (1, 2.0, 0.5, 0.05), (2, 0.5, 10.0, 0.1))  # seed, lr, theta, sigma
FIELDS = ("train_ppl", "val_ppl", "grad_norm")
QUIET = {"echo": lambda _: None}


@pytest.fixture(scope="module")
def dataset() -> input_pipeline.Dataset:
    return input_pipeline.load_dataset(CONFIG)


def make_members(
    dataset: input_pipeline.Dataset, partition: str, variants=VARIANTS
) -> list[sweep.Member]:
    model_config = ModelConfig(vocab_size=dataset.vocab_size, num_hiddens=HIDDENS)
    config = dataclasses.replace(CONFIG, partition=partition)
    return [
        sweep.Member(
            dataclasses.replace(model_config, sigma=sigma),
            dataclasses.replace(config, seed=seed, lr=lr, theta=theta),
        )
        for seed, lr, theta, sigma in variants
    ]


@pytest.fixture(scope="module")
def sweeps(dataset, tmp_path_factory):
    """``sweeps(partition)``: ``(members, vmap results, loop results, out_dir of the vmap
    run)``, computed once per partition."""
    cache = {}

    def get(partition: str):
        if partition not in cache:
            members = make_members(dataset, partition)
            out_dir = tmp_path_factory.mktemp(f"sweep-{partition}")
            vmapped = sweep.fit_sweep(members, dataset, out_dir=out_dir, mode="vmap", **QUIET)
            looped = sweep.fit_sweep(members, dataset, mode="loop", **QUIET)
            cache[partition] = members, vmapped, looped, out_dir
        return cache[partition]

    return get


@pytest.fixture(params=["sequential", "random"])
def runs(request, sweeps):
    return sweeps(request.param)


def max_param_diff(a, b) -> float:
    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_vmapped_members_equal_their_solo_runs(runs) -> None:
    _, vmapped, looped, _ = runs
    for v, solo in zip(vmapped, looped, strict=True):
        assert not v.diverged and not solo.diverged
        assert max_param_diff(v.state.params, solo.state.params) < TOL
        assert int(v.state.step) == int(solo.state.step)
        assert len(v.history) == len(solo.history) == CONFIG.num_epochs
        for rv, rs in zip(v.history, solo.history, strict=True):
            for field in FIELDS:
                assert rv[field] == pytest.approx(rs[field], rel=TOL), field


def test_members_differ(runs) -> None:
    """The members really are different runs (seeds, rates, thresholds, init scales)."""
    _, vmapped, _, _ = runs
    finals = {r.history[-1]["train_ppl"] for r in vmapped}
    assert len(finals) == len(vmapped)
    assert all(0 <= h["clipped_fraction"] <= 1 for r in vmapped for h in r.history)
    assert any(h["clipped_fraction"] > 0 for r in vmapped for h in r.history)


def test_loop_mode_is_loop_fit_bitwise(sweeps, dataset) -> None:
    members, _, looped, _ = sweeps("sequential")
    member = members[1]
    solo = loop.fit(member.model_config, member.config, dataset, progress=False, **QUIET)
    assert max_param_diff(looped[1].state.params, solo.state.params) == 0
    for rl, rs in zip(looped[1].history, solo.history, strict=True):
        for field in FIELDS:
            assert rl[field] == rs[field]


def test_run_folders(sweeps) -> None:
    members, vmapped, _, out_dir = sweeps("sequential")
    assert (out_dir / "perplexity.png").stat().st_size > 0
    summary = json.loads((out_dir / sweep.SWEEP_JSON).read_text())
    assert summary["mode"] == "vmap"
    assert summary["swept"] == ["lr", "theta", "sigma"]
    assert len(summary["members"]) == len(summary["groups"]) == len(members)
    for i, (member, result) in enumerate(zip(members, vmapped, strict=True)):
        folder = out_dir / f"member-{i}-seed{member.config.seed}"
        assert result.run_dir == folder
        assert summary["members"][i]["folder"] == folder.name
        config = json.loads((folder / run_folder.CONFIG).read_text())
        assert config["train"]["lr"] == member.config.lr
        assert config["model"]["sigma"] == member.model_config.sigma
        records = [
            json.loads(line) for line in (folder / run_folder.METRICS).read_text().splitlines()
        ]
        assert [r["epoch"] for r in records] == [1, 2]
        assert records[-1]["train_ppl"] == result.history[-1]["train_ppl"]
    restored = checkpoint.restore(out_dir / "member-1-seed1", for_training=True)
    assert restored.step == vmapped[1].history[-1]["step"]
    assert restored.train_config == members[1].config
    assert max_param_diff(restored.params, vmapped[1].state.params) == 0


def test_diverging_member_leaves_the_others_alone(sweeps, dataset) -> None:
    steady, calm, _, _ = sweeps("sequential")
    wild = list(steady)
    wild[1] = sweep.Member(
        steady[1].model_config, dataclasses.replace(steady[1].config, lr=1e6, theta=1e9)
    )
    mixed = sweep.fit_sweep(wild, dataset, **QUIET)
    assert mixed[1].diverged and mixed[1].state is None
    assert all(r["diverged"] and r["train_ppl"] == math.inf for r in mixed[1].history[-1:])
    for i in (0, 2):
        assert not mixed[i].diverged
        assert max_param_diff(mixed[i].state.params, calm[i].state.params) == 0
        assert mixed[i].history[-1]["val_ppl"] == calm[i].history[-1]["val_ppl"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("num_hiddens", 32), ("cell", "gru"), ("num_layers", 2), ("batch_size", 4),
     ("num_steps", 5), ("partition", "random"), ("corpus", "other.txt"), ("num_epochs", 3)],
)  # fmt: skip
def test_unequal_shapes_refused(dataset, field, value) -> None:
    members = make_members(dataset, "sequential")
    m = members[2]
    if field in {f.name for f in dataclasses.fields(ModelConfig)}:
        members[2] = sweep.Member(dataclasses.replace(m.model_config, **{field: value}), m.config)
    else:
        members[2] = sweep.Member(m.model_config, dataclasses.replace(m.config, **{field: value}))
    with pytest.raises(ValueError, match=f"field '{field}': member 0 has .*, member 2 has") as err:
        sweep.validate_members(members)
    assert "\n" not in str(err.value)


def test_grid_and_groups(dataset) -> None:
    model_config = ModelConfig(vocab_size=dataset.vocab_size, num_hiddens=HIDDENS)
    members = sweep.grid(model_config, CONFIG, seeds=(0, 1, 2), thetas=(0.1, 1.0))
    assert [(m.config.theta, m.config.seed) for m in members] == [
        (0.1, 0), (0.1, 1), (0.1, 2), (1.0, 0), (1.0, 1), (1.0, 2)
    ]  # fmt: skip
    sweep.validate_members(members)
    with pytest.raises(ValueError, match="SGD"):
        sweep.validate_members(
            [sweep.Member(model_config, dataclasses.replace(CONFIG, optimizer="adam"))]
        )


def test_both_modes_validate_on_eval_tokens(dataset) -> None:
    """``eval_tokens`` cuts the validation split in the vmapped mode as in ``loop.fit``."""
    members = [
        dataclasses.replace(m, config=dataclasses.replace(m.config, eval_tokens=101))
        for m in make_members(dataset, "sequential", VARIANTS[:2])
    ]
    vmapped = sweep.fit_sweep(members, dataset, mode="vmap", **QUIET)
    looped = sweep.fit_sweep(members, dataset, mode="loop", **QUIET)
    whole = sweep.fit_sweep(make_members(dataset, "sequential", VARIANTS[:1]), dataset, **QUIET)
    assert vmapped[0].history[-1]["val_ppl"] != whole[0].history[-1]["val_ppl"]
    for v, solo in zip(vmapped, looped, strict=True):
        for rv, rs in zip(v.history, solo.history, strict=True):
            assert rv["val_ppl"] == pytest.approx(rs["val_ppl"], rel=TOL)


def test_seeds_from_the_command_line(tmp_path, capsys) -> None:
    """``rnn-jax train --seeds 0,1`` with ``--sweep vmap`` and ``--sweep loop``: each
    prints the members and the mode, the mean, std, min and max of the members' final
    perplexities (the values sweep.json records), and where it wrote; the folder holds
    sweep.json, the parent plot and each member's run folder, whose last checkpoint
    restores; the two modes' members agree within TOL."""
    args = ["--max-tokens", "2000", "--num-hiddens", str(HIDDENS), "--batch-size", "8"]
    args += ["--num-steps", "10", "--epochs", "2", "--sample-every", "0", "--no-progress"]
    finals = {}
    for mode in ("vmap", "loop"):
        out = tmp_path / mode
        code = cli.main(["train", "--seeds", "0,1", "--sweep", mode, "--out", str(out), *args])
        printed = capsys.readouterr().out
        assert code == 0, printed
        summary = json.loads((out / sweep.SWEEP_JSON).read_text())
        assert summary["mode"] == mode and [m["seed"] for m in summary["members"]] == [0, 1]
        assert (out / run_folder.PLOT).stat().st_size > 0
        assert f"2 members (seeds 0, 1), {mode}" in printed
        for key, name in (("final_train_ppl", ""), ("final_val_ppl", "validation ")):
            values = [m[key] for m in summary["members"]]
            mean, std = statistics.mean(values), statistics.stdev(values)
            line = f"mean {mean:.3f}, std {std:.3f}, min {min(values):.3f}, max {max(values):.3f}"
            assert f"{name}perplexity: {line} over 2 members" in printed.splitlines(), printed
        assert f"done: 2 members (0 diverged); run folder {out}" in printed
        for member in summary["members"]:
            records = (out / member["folder"] / run_folder.METRICS).read_text().splitlines()
            last = json.loads(records[-1])
            assert last["train_ppl"] == member["final_train_ppl"]
            assert checkpoint.restore(out / member["folder"]).step == last["step"]
        finals[mode] = [(m["final_train_ppl"], m["final_val_ppl"]) for m in summary["members"]]
    np.testing.assert_allclose(finals["vmap"], finals["loop"], rtol=TOL)
