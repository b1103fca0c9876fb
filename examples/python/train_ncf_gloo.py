"""The gloo row of `train_ncf --compare`: the same NCF training step with torch.distributed
(gloo backend) and a DDP-style gradient all-reduce, one process per rank.

Started by the train_ncf launcher (or any torch.distributed launcher) with RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT and GLOO_SOCKET_IFNAME set. Prints progress on stderr and one line
`SUMMARY {json}` on stdout in the launcher's format (examples/src/lib.rs, `Summary`).

What matches train_ncf (what decides the time of a step):
- the model: user and item embedding tables (--users x --dim, --items x --dim, N(0, 0.1)), an
  MLP 2*dim -> 64 -> 32 -> 1 with ReLU (tch's initialisation), binary cross-entropy with
  logits;
- the work: --batch interactions per rank and iteration, users and items Zipf(--zipf)
  distributed, half of the items drawn from the user's hidden taste group (the same rule and
  group hash as train_ncf, a different random generator: same distribution, other numbers);
- the optimizer: Adam (lr, betas 0.9/0.999, eps 1e-8);
- the timing: compute = batch + forward + backward + optimizer step, comm = the gradient
  all-reduce; the all-reduce of the logged loss and the held-out evaluation are not timed.

The gradient all-reduce is what a DDP user gets by default: `nn.Embedding(sparse=False)`, so
*every* gradient, the embedding tables included, is all-reduced dense, in DDP's buckets
(25 MB cap, reverse registration order, a parameter larger than the cap alone in its
bucket), then averaged; the optimizer is torch.optim.Adam over dense gradients. The buckets are
all-reduced after backward (no overlap with backward; DDP's hooks could hide at most the
backward time, see the compute column). `--sparse` instead uses `nn.Embedding(sparse=True)`:
gloo all-reduces the sparse COO gradients (an all-gather of indices and values), optimizer
SparseAdam for the tables and Adam for the MLP.

Bytes per iteration: the tx byte counter of GLOO_SOCKET_IFNAME over the timed all-reduces
(wire bytes, headers included) when it is a real interface; on loopback (shared by all ranks)
the payload of gloo's ring all-reduce, 2 (n-1)/n x tensor bytes, instead.
"""
import argparse
import hashlib
import json
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F



def group_of(x, salt):
    """train_ncf's hidden taste group of a user or item id."""
    return (((x + salt) * 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF) >> 40) % 4


def mix32(x):
    """32 well-mixed bits of a 64-bit seed (splitmix64): torch's CPU generator keeps only the
    low 32 bits of a seed, and train_ncf puts the rank in the high ones."""
    z = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0xFFFFFFFF


class Zipf:
    """Zipf(s) over 1..n by inverse CDF (train_ncf: rand_distr::Zipf), returning 0-based ids."""

    def __init__(self, n, s):
        w = torch.arange(1, n + 1, dtype=torch.float64).pow(-s)
        self.cdf = torch.cumsum(w, 0)
        self.cdf /= self.cdf[-1].clone()
        self.n = n

    def sample(self, shape, g):
        u = torch.rand(shape, generator=g, dtype=torch.float64)
        return torch.searchsorted(self.cdf, u).clamp_(max=self.n - 1)


class Data:
    def __init__(self, a):
        self.a = a
        self.zu, self.zi = Zipf(a.users, a.zipf), Zipf(a.items, a.zipf)
        self.ug = torch.tensor([group_of(u, 3) for u in range(a.users)], dtype=torch.int64)
        self.ig = torch.tensor([group_of(i, 7) for i in range(a.items)], dtype=torch.int64)

    def interactions(self, seed, n):
        """n interactions: Zipf users and items; with probability 1/2 up to 16 redraws of the
        item until its group matches the user's (as train_ncf); label = groups match."""
        g = torch.Generator().manual_seed(mix32(seed))
        u = self.zu.sample((n,), g)
        cand = self.zi.sample((n, 17), g)
        want = torch.rand(n, generator=g) < 0.5
        match = self.ig[cand[:, :16]] == self.ug[u].unsqueeze(1)
        first = torch.where(match.any(1), match.int().argmax(1), torch.full((n,), 16))
        i = torch.where(want, cand.gather(1, first.unsqueeze(1)).squeeze(1), cand[:, 0])
        y = (self.ig[i] == self.ug[u]).float()
        return u, i, y

    def batch(self, rank, it):
        a = self.a
        return self.interactions(a.seed ^ (rank << 32) ^ (it * 0x1000_0001), a.batch)

    def held_out(self):
        return self.interactions(self.a.seed ^ 0x5EED_0000_0000_0001 ^ (1 << 63), self.a.eval_size)


class Ncf(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.user = nn.Embedding(a.users, a.dim, sparse=a.sparse)
        self.item = nn.Embedding(a.items, a.dim, sparse=a.sparse)
        nn.init.normal_(self.user.weight, 0.0, 0.1)
        nn.init.normal_(self.item.weight, 0.0, 0.1)
        self.mlp = nn.Sequential(nn.Linear(2 * a.dim, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1))
        for m in self.mlp:
            if isinstance(m, nn.Linear):  # tch's default: Kaiming uniform with the ReLU gain
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")

    def forward(self, u, i):
        return self.mlp(torch.cat([self.user(u), self.item(i)], 1)).view(-1)


def auc(scores, labels):
    """Probability that a random positive scores above a random negative (ties: one half)."""
    order = torch.argsort(scores, stable=True)
    s, y = scores[order], labels[order]
    _, counts = torch.unique_consecutive(s, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    avg = ends - (counts.double() - 1) / 2  # average 1-based rank of each run of ties
    ranks = torch.repeat_interleave(avg, counts)
    p = float(y.sum())
    n = len(y) - p
    if p == 0 or n == 0:
        return float("nan")
    return (float(ranks[y > 0.5].sum()) - p * (p + 1) / 2) / (p * n)


def buckets(params, cap):
    """DDP's bucketing: reverse registration order, a bucket closes once it reaches the cap."""
    out, cur, size = [], [], 0
    for p in reversed(params):
        cur.append(p)
        size += p.numel() * p.element_size()
        if size >= cap:
            out.append(cur)
            cur, size = [], 0
    if cur:
        out.append(cur)
    return out


def iface_tx(ifname):
    try:
        with open(f"/sys/class/net/{ifname}/statistics/tx_bytes") as f:
            return int(f.read())
    except OSError:
        return None


def param_hash(model):
    """blake2b-64 over every parameter's bytes (registration order)."""
    h = hashlib.blake2b(digest_size=8)
    for p in model.parameters():
        h.update(p.detach().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=138_493)
    ap.add_argument("--items", type=int, default=26_744)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--zipf", type=float, default=1.1)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--optim", choices=["adam", "sgd"], default="adam")
    ap.add_argument("--bucket-bytes", type=int, default=25 << 20, help="DDP's bucket_cap_mb, in bytes")
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--eval-size", type=int, default=4096)
    # Defaults: train_ncf's (the launcher passes them all anyway).
    ap.add_argument("--sparse", action="store_true", help="sparse embedding gradients (see the module doc)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    ifname = os.environ.get("GLOO_SOCKET_IFNAME", "lo")
    quiet = rank != 0 or os.environ.get("SKETCHREDUCE_QUIET")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(a.seed)
    data = Data(a)
    model = Ncf(a)
    for p in model.parameters():  # identical start on every rank, as DDP's constructor does
        dist.broadcast(p.data, 0)
    params = list(model.parameters())
    if a.optim == "sgd":
        opts = [torch.optim.SGD(params, lr=a.lr)]
        dense_params = list(model.mlp.parameters()) if a.sparse else params
    elif a.sparse:
        emb = [model.user.weight, model.item.weight]
        opts = [torch.optim.SparseAdam(emb, lr=a.lr), torch.optim.Adam(model.mlp.parameters(), lr=a.lr)]
        dense_params = list(model.mlp.parameters())
    else:
        opts = [torch.optim.Adam(params, lr=a.lr)]
        dense_params = params
    plan = buckets(dense_params, a.bucket_bytes)
    grad_bytes = sum(p.numel() * 4 for p in params)
    eval_set = data.held_out() if rank == 0 else None

    def evaluate():
        if eval_set is None:
            return None
        u, i, y = eval_set
        with torch.no_grad():
            return auc(model(u, i), y)

    curve_metric = [evaluate()]
    compute = comm = 0.0
    tx0 = iface_tx(ifname) if ifname != "lo" else None
    first_loss = last_loss = None
    for it in range(a.iters):
        t0 = time.perf_counter()
        u, i, y = data.batch(rank, it)
        loss = F.binary_cross_entropy_with_logits(model(u, i), y)
        for o in opts:
            o.zero_grad(set_to_none=a.sparse)
        loss.backward()
        t1 = time.perf_counter()
        works = []
        flat = []
        for b in plan:
            f = torch.cat([p.grad.reshape(-1) for p in b])
            flat.append(f)
            works.append(dist.all_reduce(f, async_op=True))
        sparse_out = []
        if a.sparse:
            for p in (model.user.weight, model.item.weight):
                g = p.grad.coalesce()
                sparse_out.append((p, g))
                works.append(dist.all_reduce(g, async_op=True))
        for w in works:
            w.wait()
        for b, f in zip(plan, flat):
            f /= world
            off = 0
            for p in b:
                n = p.numel()
                p.grad.copy_(f[off:off + n].view_as(p.grad))
                off += n
        for p, g in sparse_out:
            p.grad = (g / world).coalesce()
        t2 = time.perf_counter()
        for o in opts:
            o.step()
        t3 = time.perf_counter()
        compute += (t1 - t0) + (t3 - t2)
        comm += t2 - t1
        l = loss.detach().clone().reshape(1)
        dist.all_reduce(l)
        last_loss = float(l) / world
        first_loss = last_loss if first_loss is None else first_loss
        done = it + 1
        if done % max(1, a.eval_every) == 0 or done == a.iters:
            m = evaluate()
            if m is not None:
                curve_metric.append(m)
        if not quiet:
            print(f"\r      gloo [{done}/{a.iters}] loss {last_loss:.4f} compute {1e3 * (t1 - t0 + t3 - t2):.1f} ms "
                  f"comm {1e3 * (t2 - t1):.1f} ms   ", end="", file=sys.stderr, flush=True)
    tx1 = iface_tx(ifname) if tx0 is not None else None
    if not quiet:
        print(file=sys.stderr)
    n = max(1, a.iters)
    if tx0 is not None and tx1 is not None:
        sent = (tx1 - tx0) / n  # includes the (tiny) loss all-reduces
    elif a.sparse:
        sent = float("nan")
    else:
        sent = 2 * (world - 1) / world * grad_bytes
    s = {
        "algo": "gloo", "rank": rank, "world": world, "iters": a.iters,
        "compute_ms": 1e3 * compute / n, "comm_ms": 1e3 * comm / n, "iter_ms": 1e3 * (compute + comm) / n,
        "bytes_per_iter": sent if sent == sent else 0.0,
        "first_loss": first_loss, "final_loss": last_loss, "param_hash": param_hash(model),
        "ops_by_algo": [["innet", 0], ["ring", 0], ["allgather", 0]],
        "metric": "AUC", "first_metric": curve_metric[0], "final_metric": curve_metric[-1] if rank == 0 else None,
        "phases": [],
    }
    print("SUMMARY " + json.dumps(s), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
