"""gloo (torch.distributed, CPU) vs sketchreduce all-reduce on the same tensor sizes.

Run through benches/gloo_compare.sh (it prepares the venv). For each worker count and density,
N gloo processes all-reduce a dense f32 tensor of `dim` elements (dense with the given fraction
of nonzeros; gloo's sparse COO all-reduce is measured by benches/netbench/run), and
`sketchreduce bench allreduce --algo A` runs the same dim/density/workers for each algorithm.
Everything runs on 127.0.0.1 of this machine, so the bottleneck is the CPU shared by all
processes, not a network link.
"""
import argparse, json, os, socket, subprocess, sys, time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def gloo_worker(rank, world, port, dim, density, iters, q):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    g = torch.Generator().manual_seed(rank)
    t = torch.randn(dim, generator=g) * (torch.rand(dim, generator=g) < density)
    times = []
    for _ in range(iters + 2):
        x = t.clone()
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(x)
        times.append(time.perf_counter() - t0)
    dist.destroy_process_group()
    if rank == 0:
        times = sorted(times[2:])
        q.put({"mean_ms": 1e3 * sum(times) / len(times), "p50_ms": 1e3 * times[len(times) // 2]})


def run_gloo(world, dim, density, iters):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    ps = [ctx.Process(target=gloo_worker, args=(r, world, port, dim, density, iters, q)) for r in range(world)]
    for p in ps:
        p.start()
    res = q.get(timeout=600)
    for p in ps:
        p.join()
    return res


def run_sketchreduce(binary, algo, world, dim, density, iters):
    cmd = [binary, "bench", "allreduce", "--algo", algo, "--workers", str(world), "--dim", str(dim),
           "--density", str(density), "--iters", str(iters), "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    line = next((l for l in p.stdout.splitlines() if l.startswith("{")), None)
    if p.returncode != 0 or line is None:
        return {"status": "unavailable", "error": (p.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(line)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sketchreduce", required=True)
    ap.add_argument("--workers", default="2,4")
    ap.add_argument("--dim", type=int, default=1_000_000)
    ap.add_argument("--densities", default="0.001,0.01,0.1,1.0")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--algos", default="innet,ring,allgather")
    a = ap.parse_args()
    rows = []
    for w in [int(x) for x in a.workers.split(",")]:
        for d in [float(x) for x in a.densities.split(",")]:
            g = run_gloo(w, a.dim, d, a.iters)
            rows.append({"system": "gloo", "workers": w, "density": d, "dim": a.dim, **g, "exact": None})
            print(json.dumps(rows[-1]), file=sys.stderr)
            for algo in a.algos.split(","):
                r = run_sketchreduce(a.sketchreduce, algo, w, a.dim, d, a.iters)
                rows.append({"system": f"sketchreduce-{algo}", "workers": w, "density": d, "dim": a.dim,
                             "mean_ms": r.get("mean_ms"), "p50_ms": None, "exact": r.get("exact"),
                             "bytes_sent_per_worker": r.get("bytes_sent_per_worker"),
                             "status": r.get("status"), "error": r.get("error")})
                print(json.dumps(rows[-1]), file=sys.stderr)
    os.makedirs("out", exist_ok=True)
    note = ("All processes run on 127.0.0.1 of one 2-core machine: the bottleneck is the CPU "
            "shared by the workers (and the software switch), not a network link.")
    with open("out/gloo_compare.json", "w") as f:
        json.dump({"note": note, "torch": torch.__version__, "rows": rows}, f, indent=1)
    with open("out/gloo_compare.md", "w") as f:
        f.write(f"# gloo vs sketchreduce all-reduce (dim {a.dim})\n\n{note}\n\n")
        f.write("| system | workers | density | mean ms | exact | bytes/worker | status |\n|---|---|---|---|---|---|---|\n")
        for r in rows:
            ms = "-" if r.get("mean_ms") is None else f"{r['mean_ms']:.2f}"
            f.write(f"| {r['system']} | {r['workers']} | {r['density']} | {ms} | {r.get('exact')} | "
                    f"{r.get('bytes_sent_per_worker') or '-'} | {r.get('status', 'ok')} |\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(1, 2, figsize=(11, 4))
        systems = sorted({r["system"] for r in rows})
        wmax = max(r["workers"] for r in rows)
        for s in systems:
            pts = [(r["density"], r["mean_ms"]) for r in rows if r["system"] == s and r["workers"] == wmax and r.get("mean_ms")]
            if pts:
                ax[0].plot(*zip(*pts), marker="o", label=s)
            dmax = max(r["density"] for r in rows)
            pts = [(r["workers"], r["mean_ms"]) for r in rows if r["system"] == s and r["density"] == dmax and r.get("mean_ms")]
            if pts:
                ax[1].plot(*zip(*pts), marker="o", label=s)
        ax[0].set(xscale="log", yscale="log", xlabel="density", ylabel="ms per all-reduce", title=f"{wmax} workers")
        ax[1].set(yscale="log", xlabel="workers", ylabel="ms per all-reduce", title=f"density {dmax}")
        ax[0].legend()
        fig.suptitle("loopback, 2-core CPU-bound: " + f"dim {a.dim}")
        fig.tight_layout()
        fig.savefig("out/gloo_compare.png", dpi=120)
    except Exception as e:  # the table is the result; the plot is a bonus
        print(f"plot skipped: {e}", file=sys.stderr)
    print(open("out/gloo_compare.md").read())


if __name__ == "__main__":
    main()
