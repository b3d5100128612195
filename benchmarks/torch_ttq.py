"""The PyTorch peer of ``time_to_quality.py``: ``nn.LSTM``/``nn.GRU`` + ``nn.Linear``, one
thread (``--threads``), trained for a wall budget on the minibatches the harness wrote,
validated every few seconds of training. Prints one JSON line per validation, then a
summary line.

Runs in the peers' virtualenv (PyTorch is never a dependency of rnn_jax); adapted from
``shared/peers/torch_peers.py`` (``ConciseRNN``, its train step), with the optimizer a
``torch.optim`` one after ``clip_grad_norm_``:

    taskset -c 0 .venv-peers/bin/python benchmarks/torch_ttq.py --data DATA.npz \\
        --cell lstm --optimizer adam --lr 2e-3 --seconds 60 --eval-every 5

``--device cuda`` runs it on a GPU: ``benchmarks/gpu.sh`` uses it for its ``nn.RNN`` and
``nn.LSTM`` training rows (``--cell rnn`` is there for it), with ``--warmup 1``: one
forward and backward, no update, before the clock starts, so cuDNN's first call is not
timed. The defaults are what ``time_to_quality.py`` measured with.

Shape legend: K minibatches, B batch, T num_steps, V vocab_size, H num_hiddens.
``DATA.npz`` holds ``train_X, train_Y`` ``(K, B, T)`` (the sequential partition, one
epoch), ``val_X, val_Y`` ``(K', B, T)`` and ``vocab_size``.
"""

import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (PyTorch's own spelling)
from torch import nn


class ConciseRNN(nn.Module):
    """One-hot tokens -> ``nn.LSTM``/``nn.GRU``/``nn.RNN`` (tanh) -> ``nn.Linear`` head,
    PyTorch's default init (every weight and bias ~ U(-1/sqrt(H), 1/sqrt(H)))."""

    def __init__(self, cell: str, vocab_size: int, num_hiddens: int) -> None:
        super().__init__()
        self.rnn = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[cell](vocab_size, num_hiddens)
        self.vocab_size, self.num_hiddens = vocab_size, num_hiddens
        self.linear = nn.Linear(num_hiddens, vocab_size)

    def forward(self, X, state):
        """``X`` ``(B, T)`` -> logits ``(T B, V)`` (time-major rows), state."""
        Y, state = self.rnn(F.one_hot(X.T, self.vocab_size).type(torch.float32), state)
        return self.linear(Y.reshape((-1, Y.shape[-1]))), state

    def begin_state(self, batch_size: int):
        z = torch.zeros((1, batch_size, self.num_hiddens), device=self.linear.weight.device)
        return (z, z.clone()) if isinstance(self.rnn, nn.LSTM) else z


def detach(state):
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def validation_bpc(net: ConciseRNN, Xs: torch.Tensor, Ys: torch.Tensor) -> float:
    """Bits per character over ``Xs, Ys`` ``(K, B, T)``, the state carried from zeros."""
    state, nll = net.begin_state(Xs.shape[1]), 0.0
    with torch.no_grad():
        for X, Y in zip(Xs, Ys, strict=True):
            logits, state = net(X, state)
            nll += float(F.cross_entropy(logits, Y.T.reshape(-1), reduction="sum"))
    return nll / Ys.numel() / math.log(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True)
    ap.add_argument("--cell", choices=["rnn", "gru", "lstm"], default="lstm")
    ap.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    ap.add_argument("--lr", type=float, default=1.0)
    ap.add_argument("--theta", type=float, default=1.0)
    ap.add_argument("--num-hiddens", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=120.0, help="training wall budget")
    ap.add_argument("--eval-every", type=float, default=5.0, help="seconds of training")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--warmup", type=int, default=0, help="untimed forward+backward calls")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    data = np.load(args.data)
    train_X, train_Y, val_X, val_Y = (
        torch.from_numpy(data[k].astype(np.int64)).to(device)
        for k in ("train_X", "train_Y", "val_X", "val_Y")
    )
    K, B, T = train_X.shape
    net = ConciseRNN(args.cell, int(data["vocab_size"]), args.num_hiddens).to(device)
    params = list(net.parameters())
    if args.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=args.lr)
    else:
        optimizer = torch.optim.Adam(params, lr=args.lr)

    def emit(**fields) -> None:
        print(
            json.dumps({"impl": "torch", "cell": args.cell, "optimizer": args.optimizer, **fields})
        )

    for _ in range(args.warmup):  # no update: the timed run starts from the same weights
        logits, _ = net(train_X[0], net.begin_state(B))
        F.cross_entropy(logits, train_Y[0].T.reshape(-1)).backward()
        optimizer.zero_grad(set_to_none=True)
    steps, elapsed, next_eval, state = 0, 0.0, args.eval_every, None
    emit(elapsed=0.0, steps=0, val_bpc=validation_bpc(net, val_X, val_Y))
    while elapsed < args.seconds:
        k = steps % K
        state = net.begin_state(B) if k == 0 else detach(state)  # each epoch from zeros
        t0 = time.perf_counter()
        logits, state = net(train_X[k], state)
        loss = F.cross_entropy(logits, train_Y[k].T.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, args.theta)
        optimizer.step()
        float(loss)  # the step has finished
        elapsed += time.perf_counter() - t0
        steps += 1
        if elapsed >= next_eval or elapsed >= args.seconds:
            emit(elapsed=elapsed, steps=steps, val_bpc=validation_bpc(net, val_X, val_Y))
            next_eval += args.eval_every
    emit(
        final=True,
        steps=steps,
        elapsed=elapsed,
        tokens_per_s=steps * B * T / elapsed,
        compile_s=0.0,
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        device=str(device),
    )


if __name__ == "__main__":
    main()
