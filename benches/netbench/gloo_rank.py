"""One rank of the gloo peers of `benches/netbench/run`: torch.distributed (gloo backend)
`all_reduce` of a dense f32 tensor and of a sparse COO tensor, for every density, in one
process group.

Started once per rank (in that rank's network namespace) with RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT and GLOO_SOCKET_IFNAME set, like any torch.distributed launcher would. Prints one
JSON line per (mode, density) on stdout.

Inputs match `sketchreduce bench allreduce --overlap 0 --pattern random`: each rank has
round(density * dim) nonzeros at independent random positions, values N(0,1) * 10^(-3u) with
u ~ U[0,1) per nonzero. (Same distribution, not the same numbers: gloo's timing does not depend
on the values, and its float sums are checked against a float64 reference here.)

- dense: the whole dim-element tensor goes through gloo's ring all-reduce whatever the density.
- sparse: `torch.sparse_coo_tensor` (coalesced, int64 indices); gloo all-gathers every rank's
  indices and values and sums locally: the peer of sketchreduce's `allgather`.

Timing per iteration, as in the sketchreduce rank: clone (untimed), barrier, all_reduce
(timed), barrier. `wire_tx_bytes` / `wire_rx_bytes` are the interface counters of
GLOO_SOCKET_IFNAME over the timed iterations (barriers included), per operation.
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.distributed as dist


def gradient(rank, dim, density, seed):
    """(sorted int64 indices, f32 values) of one rank's sparse gradient."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + rank)
    nnz = min(dim, round(density * dim))
    idx = torch.randperm(dim, generator=g)[:nnz].sort().values
    scale = torch.pow(10.0, -3.0 * torch.rand(nnz, generator=g, dtype=torch.float64))
    val = (torch.randn(nnz, generator=g, dtype=torch.float64) * scale).float()
    zero = val == 0
    val[zero] = scale[zero].float()
    return idx, val


def iface_bytes(ifname):
    base = f"/sys/class/net/{ifname}/statistics"
    try:
        with open(f"{base}/tx_bytes") as t, open(f"{base}/rx_bytes") as r:
            return int(t.read()), int(r.read())
    except OSError:
        return None


def check(x, mode, world, dim, density, seed):
    """Result vs the float64 sum of every rank's input (regenerated here): max |error| and
    whether it is within a float32 summation bound."""
    want = torch.zeros(dim, dtype=torch.float64)
    mag = torch.zeros(dim, dtype=torch.float64)
    for r in range(world):
        i, v = gradient(r, dim, density, seed)
        want.index_add_(0, i, v.double())
        mag.index_add_(0, i, v.double().abs())
    got = (x.to_dense() if mode == "sparse" else x).double()
    err = (got - want).abs()
    # At most world - 1 float32 additions in any order: each rounds by <= 2^-24 of a partial
    # sum, and every partial sum is <= the sum of magnitudes.
    bound = max(world - 1, 1) * 2.0 ** -24 * mag + 1e-45
    return float(err.max()) if dim else 0.0, bool((err <= bound).all())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dim", type=int, required=True)
    ap.add_argument("--densities", required=True)
    ap.add_argument("--modes", default="dense,sparse")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--check", action="store_true", help="compare the last result with a float64 reference")
    a = ap.parse_args()
    torch.set_num_threads(1)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    ifname = os.environ.get("GLOO_SOCKET_IFNAME", "eth0")
    t0 = time.perf_counter()
    dist.init_process_group("gloo", rank=rank, world_size=world)
    setup_ms = 1e3 * (time.perf_counter() - t0)
    for density in [float(d) for d in a.densities.split(",")]:
        idx, val = gradient(rank, a.dim, density, a.seed)
        for mode in a.modes.split(","):
            if mode == "dense":
                t = torch.zeros(a.dim)
                t[idx] = val
            elif mode == "sparse":
                t = torch.sparse_coo_tensor(idx.unsqueeze(0), val, (a.dim,), check_invariants=False).coalesce()
            else:
                sys.exit(f"unknown mode {mode}")
            times, wire0, x = [], None, None
            status, error = "ok", None
            try:
                for it in range(a.warmup + a.iters):
                    x = t.clone()
                    dist.barrier()
                    if it == a.warmup:
                        wire0 = iface_bytes(ifname)
                    s = time.perf_counter()
                    dist.all_reduce(x)
                    e = time.perf_counter()
                    dist.barrier()
                    if it >= a.warmup:
                        times.append(1e3 * (e - s))
                wire1 = iface_bytes(ifname)
            except Exception as ex:  # report the cell and stop: the group is unusable
                status, error, wire1 = "error", repr(ex), None
            row = {
                "system": f"gloo-{mode}", "rank": rank, "world_size": world, "dim": a.dim,
                "density": density, "iters": a.iters, "warmup": a.warmup, "status": status,
                "error": error, "times_ms": [round(x_, 3) for x_ in times],
                "setup_ms": round(setup_ms, 3), "torch": torch.__version__,
            }
            if times:
                st = sorted(times)
                row.update(mean_ms=round(sum(times) / len(times), 3), p50_ms=round(st[len(st) // 2], 3),
                           max_ms=round(st[-1], 3))
            if wire0 and wire1:
                row.update(wire_tx_bytes=(wire1[0] - wire0[0]) // max(1, a.iters),
                           wire_rx_bytes=(wire1[1] - wire0[1]) // max(1, a.iters))
            if mode == "sparse" and x is not None and status == "ok":
                row["result_nnz"] = int(x._nnz())
            if a.check and x is not None and status == "ok":
                row["max_abs_err_f64"], row["within_f32_bound"] = check(x, mode, world, a.dim, density, a.seed)
            print(json.dumps(row), flush=True)
            if status != "ok":
                return 1
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
