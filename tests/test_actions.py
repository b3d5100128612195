"""The loop's periodic actions: cadences, and a new action that changes nothing else.

``actions.Every`` is held to the rule the loop used before it existed (a task every N
epochs runs after epoch e when (e + 1) % N == 0 or e + 1 is the last epoch); a new
action (an "export" every 3 steps, as a fine-tuning or export issue would add) is added
to ``loop.fit`` without touching the loop, and training stays bitwise what it was.
"""

from __future__ import annotations

import dataclasses

import chex
import numpy as np
import pytest

from rnn_jax import actions, input_pipeline, loop
from rnn_jax.actions import At, Every


def _old_due(every: int, epoch: int, num_epochs: int) -> bool:
    """The rule of ``loop.due`` before the redesign: the reference for ``Every``."""
    return every > 0 and ((epoch + 1) % every == 0 or epoch + 1 == num_epochs)


@pytest.mark.parametrize("every", [0, 1, 2, 3, 7])
@pytest.mark.parametrize("num_epochs", [1, 5, 6])
def test_every_epochs_is_the_old_rule(every, num_epochs):
    K = 4
    for step in range(1, num_epochs * K + 1):
        at = At(step, K, num_epochs * K, num_epochs)
        want = step % K == 0 and _old_due(every, step // K - 1, num_epochs)
        assert Every(epochs=every)(at) == want, (every, num_epochs, step)


def test_every_steps_and_last():
    K, total = 5, 23  # a step budget that ends inside an epoch
    due = [s for s in range(1, total + 1) if Every(steps=4, last=True)(At(s, K, total, 9))]
    assert due == [4, 8, 12, 16, 20, 23]
    assert not any(Every()(At(s, K, total, 9)) for s in range(1, total + 1))
    at = At(10, K, total, 9)
    assert at.epoch == 1 and at.epoch_end and not at.last
    assert At(11, K, total, 9).epoch == 2


class Export(actions.Action):
    """A new periodic action: what it saw, every 3 steps."""

    def __init__(self) -> None:
        self.every = Every(steps=3)
        self.started = self.closed = False
        self.seen: list[int] = []
        self.records: list[int] = []

    def start(self, state):
        self.started = True

    def __call__(self, state, point):
        self.records.append(point.at.step)
        if self.every(point.at):
            self.seen.append(int(state.step))

    def close(self, end):
        self.closed = end is not None and not end.interrupted


def test_a_new_action_needs_no_change_to_the_loop(tiny_model_config, tiny_config, tiny_dataset):
    """The export runs at steps 3, 6, 9, ... (its own cadence forces those records); every
    action sees every record; the params and the epoch records are bitwise those of a run
    without it."""
    config = dataclasses.replace(tiny_config, num_epochs=2)
    quiet = {"echo": lambda _: None, "progress": False}
    plain = loop.fit(tiny_model_config, config, tiny_dataset, **quiet)
    export = Export()
    with_export = loop.fit(tiny_model_config, config, tiny_dataset, actions=[export], **quiet)
    K = input_pipeline.steps_per_epoch(config, tiny_dataset)
    total = 2 * K
    assert export.started and export.closed
    assert export.seen == list(range(3, total + 1, 3))
    assert export.records == sorted(set(range(3, total + 1, 3)) | {K, total})
    assert [r["step"] for r in with_export.history] == export.records
    chex.assert_trees_all_equal(with_export.state.params, plain.state.params)
    epoch_ends = [r for r in with_export.history if isinstance(r["epoch"], int)]
    assert [r["val_ppl"] for r in epoch_ends] == [r["val_ppl"] for r in plain.history]
    # The forced records split each epoch's steps: together they hold the epoch's losses.
    previous = 0
    for epoch, want in enumerate(plain.history):
        mine = [r for r in with_export.history if epoch * K < r["step"] <= (epoch + 1) * K]
        nll = 0.0
        for r in mine:
            nll += np.log(r["train_ppl"]) * (r["step"] - previous)
            previous = r["step"]
        assert nll / K == pytest.approx(np.log(want["train_ppl"]), rel=1e-6)


def test_an_action_can_stop_the_loop(tiny_model_config, tiny_config, tiny_dataset):
    """``after_step`` returning True stops after that step: interrupted, with the open
    record's sums to save; every action is closed with how the loop ended."""

    class StopAt(actions.Action):
        def __init__(self, step):
            self.step, self.end = step, None

        def after_step(self, at):
            return at.step == self.step

        def close(self, end):
            self.end = end

    stop = StopAt(5)
    result = loop.fit(
        tiny_model_config,
        tiny_config,
        tiny_dataset,
        actions=[stop],
        echo=lambda _: None,
        progress=False,
    )
    assert result.interrupted and int(result.state.step) == 5
    assert stop.end is not None and stop.end.interrupted
    assert result.sums == stop.end.sums and result.sums["batches"] == 5
    assert np.isfinite(result.sums["loss"])


def test_make_record_is_the_one_record(tiny_dataset):
    """A record's fields and their arithmetic, char tokens: bits per character beside
    perplexity, the mean gradient norm, tokens/s over the record's seconds."""
    record = loop.make_record(
        12,
        4,
        4,
        loss_sum=4 * np.log(5.0),
        grad_norm_sum=2.0,
        seconds=0.5,
        tokens_per_batch=80,
        char=True,
        lr=0.5,
    )
    assert record["epoch"] == 3 and record["step"] == 12 and record["val_ppl"] is None
    assert record["train_ppl"] == pytest.approx(5.0) and record["train_bpc"] == pytest.approx(
        np.log2(5.0)
    )
    assert record["grad_norm"] == 0.5 and record["tokens_per_s"] == 640 and record["lr"] == 0.5
    inside = loop.make_record(6, 4, 2, 2.0, 1.0, 1.0, 80, char=False, clipped=1)
    assert inside["epoch"] == 1.5 and inside["clipped_fraction"] == 0.5
    assert "train_bpc" not in inside and "lr" not in inside
