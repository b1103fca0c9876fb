//! tch integration (feature `tch`): all-reduce of `tch::Tensor`s and a DDP-shaped helper.
//!
//! Dense tensors must be CPU `f32`. Sparse COO tensors (e.g. the gradient of an
//! `nn::embedding` with `sparse: true`) are reduced without densifying: their sparse
//! dimensions are linearised into block indices, each block holding the dense trailing
//! dimensions (a whole embedding row), and sent as (index, block) pairs — or densified only if
//! the chosen algorithm is the dense ring.

use crate::comm::{Communicator, Pending};
use crate::config::Algo;
use crate::error::{CollectiveError, Result};
use crate::reduce::{OpInfo, ReduceOp};
use crate::sparse::SparseVec;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

fn terr(e: tch::TchError) -> CollectiveError {
    CollectiveError::Tch(e.to_string())
}

fn check_cpu_f32(t: &Tensor, what: &str) -> Result<()> {
    if t.device() != Device::Cpu || t.kind() != Kind::Float {
        return Err(CollectiveError::Input(format!(
            "{what}: only CPU f32 tensors are supported, got {:?} {:?}",
            t.device(),
            t.kind()
        )));
    }
    Ok(())
}

/// Copies a dense CPU f32 tensor into a `Vec` (any shape, any strides).
pub fn tensor_to_vec(t: &Tensor) -> Result<Vec<f32>> {
    check_cpu_f32(t, "tensor")?;
    let t = t.contiguous().view(-1);
    Vec::<f32>::try_from(&t).map_err(terr)
}

/// Shape of a sparse COO tensor as a [`SparseVec`]: (block count, block width).
fn sparse_to_vec(t: &Tensor) -> Result<(SparseVec, Vec<i64>, i64)> {
    let t = t.f_coalesce().map_err(terr)?;
    let values = t.f_values().map_err(terr)?;
    check_cpu_f32(&values, "sparse tensor values")?;
    let indices = t.f_indices().map_err(terr)?; // [sparse_dim, nnz]
    let size = t.size();
    let sparse_dim = indices.size()[0];
    let block: i64 = size[sparse_dim as usize..].iter().product();
    let len: i64 = size[..sparse_dim as usize].iter().product();
    // Linearise the sparse coordinates (row-major), which keeps coalesced order sorted.
    let mut lin = Tensor::zeros([indices.size()[1]], (Kind::Int64, Device::Cpu));
    for d in 0..sparse_dim {
        lin = lin * size[d as usize] + indices.get(d);
    }
    let idx: Vec<i64> = Vec::try_from(&lin).map_err(terr)?;
    let vals: Vec<f32> = Vec::try_from(&values.contiguous().view(-1)).map_err(terr)?;
    let sv = SparseVec {
        len: len as usize,
        block: block.max(1) as usize,
        indices: idx.into_iter().map(|i| i as u64).collect(),
        values: vals,
    };
    Ok((sv, size, sparse_dim))
}

fn vec_to_sparse(s: &SparseVec, size: &[i64], sparse_dim: i64) -> Result<Tensor> {
    let nnz = s.indices.len() as i64;
    let lin: Vec<i64> = s.indices.iter().map(|&i| i as i64).collect();
    let mut rows: Vec<Tensor> = Vec::new();
    let mut rest = Tensor::from_slice(&lin);
    for d in (0..sparse_dim).rev() {
        let sz = size[d as usize];
        rows.push(rest.remainder(sz));
        rest = rest.divide_scalar_mode(sz, "floor");
    }
    rows.reverse();
    let indices = if rows.is_empty() {
        Tensor::zeros([0, nnz], (Kind::Int64, Device::Cpu))
    } else {
        Tensor::stack(&rows, 0)
    };
    let mut vshape = vec![nnz];
    vshape.extend_from_slice(&size[sparse_dim as usize..]);
    let values = Tensor::from_slice(&s.values).view(vshape.as_slice());
    Tensor::f_sparse_coo_tensor_indices_size(
        &indices,
        &values,
        size,
        (Kind::Float, Device::Cpu),
        true,
    )
    .map_err(terr)
}

/// A tensor all-reduce in flight.
pub struct PendingTensor {
    inner: PendingKind,
}

enum PendingKind {
    Dense(Pending<Vec<f32>>, Vec<i64>),
    Sparse(Pending<SparseVec>, Vec<i64>, i64),
}

impl PendingTensor {
    /// Waits and returns the reduced tensor (dense: same shape; sparse: coalesced COO).
    pub fn wait(self) -> Result<(Tensor, OpInfo)> {
        match self.inner {
            PendingKind::Dense(p, shape) => {
                let (v, info) = p.wait()?;
                Ok((Tensor::from_slice(&v).view(shape.as_slice()), info))
            }
            PendingKind::Sparse(p, size, sd) => {
                let (s, info) = p.wait()?;
                Ok((vec_to_sparse(&s, &size, sd)?, info))
            }
        }
    }
}

impl Communicator {
    /// Starts an all-reduce of a tensor (dense CPU f32, or sparse COO with f32 values).
    /// `algo: None` uses the configured algorithm.
    pub fn start_tensor(
        &self,
        t: &Tensor,
        op: ReduceOp,
        algo: Option<Algo>,
    ) -> Result<PendingTensor> {
        if t.is_sparse() {
            let (sv, size, sd) = sparse_to_vec(t)?;
            Ok(PendingTensor {
                inner: PendingKind::Sparse(self.start_sparse(sv, op, algo), size, sd),
            })
        } else {
            let v = tensor_to_vec(t)?;
            let p = match algo {
                Some(a) => self.start_with(v, op, a),
                None => self.start(v, op),
            };
            Ok(PendingTensor {
                inner: PendingKind::Dense(p, t.size()),
            })
        }
    }

    /// Blocking all-reduce of a tensor; returns the result as a new tensor.
    pub fn all_reduce_tensor(&self, t: &Tensor, op: ReduceOp) -> Result<(Tensor, OpInfo)> {
        self.start_tensor(t, op, None)?.wait()
    }

    /// Blocking in-place all-reduce of a dense tensor (like `torch.distributed.all_reduce`).
    pub fn all_reduce_tensor_(&self, t: &mut Tensor, op: ReduceOp) -> Result<OpInfo> {
        if t.is_sparse() {
            return Err(CollectiveError::Input(
                "in-place all-reduce needs a dense tensor; use all_reduce_tensor for sparse ones"
                    .into(),
            ));
        }
        let (r, info) = self.all_reduce_tensor(t, op)?;
        tch::no_grad(|| t.f_copy_(&r)).map_err(terr)?;
        Ok(info)
    }
}

/// Default gradient bucket size, as in PyTorch DDP.
pub const DEFAULT_BUCKET_BYTES: usize = 25 << 20;

/// What one [`DistributedDataParallel::sync_gradients`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DdpReport {
    /// Dense buckets all-reduced.
    pub buckets: usize,
    /// Sparse gradients all-reduced (one operation each, not bucketed).
    pub sparse_tensors: usize,
    /// Parameters whose `grad()` was undefined after backward (skipped, like
    /// `find_unused_parameters`), by name.
    pub without_grad: Vec<String>,
    /// Bytes sent by this rank.
    pub bytes_sent: u64,
    /// Wall time from the first submission to the last result.
    pub comm_time: Duration,
    /// Algorithm of each operation, in order (dense buckets and sparse tensors).
    pub algos: Vec<Algo>,
}

/// Data-parallel gradient averaging over a `VarStore`, shaped like PyTorch DDP: call
/// [`Self::sync_gradients`] after `backward()` and before the optimizer step.
///
/// Dense gradients are packed into buckets of about [`Self::bucket_bytes`] in *reverse
/// registration order* (the order backward produces them), each bucket is all-reduced as one
/// tensor while the next one is being packed, and the averages are written back into the
/// `.grad` tensors. Sparse gradients are all-reduced one by one on the sparse path. Every
/// rank must have the same model (same registration order and shapes).
///
/// libtorch offers no gradient hooks through tch, so communication overlaps with packing and
/// with the other buckets, not with backward itself.
pub struct DistributedDataParallel {
    comm: Arc<Communicator>,
    vars: Vec<(String, Tensor)>,
    /// Target bucket size in bytes (a bucket closes once it reaches it).
    pub bucket_bytes: usize,
    /// Algorithm for every operation (`None`: the communicator's).
    pub algo: Option<Algo>,
}

impl DistributedDataParallel {
    /// Wraps the trainable variables of `vs` (in registration order).
    pub fn new(comm: Arc<Communicator>, vs: &tch::nn::VarStore) -> Self {
        let names: std::collections::HashMap<usize, String> = vs
            .variables()
            .into_iter()
            .map(|(n, t)| (t.data_ptr() as usize, n))
            .collect();
        let vars = vs
            .trainable_variables()
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                let name = names
                    .get(&(t.data_ptr() as usize))
                    .cloned()
                    .unwrap_or_else(|| format!("param{i}"));
                (name, t)
            })
            .collect();
        DistributedDataParallel {
            comm,
            vars,
            bucket_bytes: DEFAULT_BUCKET_BYTES,
            algo: None,
        }
    }

    /// Builder: bucket size in bytes.
    pub fn with_bucket_bytes(mut self, bytes: usize) -> Self {
        self.bucket_bytes = bytes.max(4);
        self
    }

    /// Builder: algorithm.
    pub fn with_algo(mut self, algo: Algo) -> Self {
        self.algo = Some(algo);
        self
    }

    /// The communicator.
    pub fn communicator(&self) -> &Arc<Communicator> {
        &self.comm
    }

    /// The wrapped parameters (name, tensor), in registration order.
    pub fn parameters(&self) -> &[(String, Tensor)] {
        &self.vars
    }

    /// Averages every gradient over all ranks, in place. See the type docs.
    pub fn sync_gradients(&self) -> Result<DdpReport> {
        let t0 = Instant::now();
        let mut report = DdpReport::default();
        let mut pending_dense: Vec<(Pending<Vec<f32>>, Vec<Tensor>)> = Vec::new();
        let mut pending_sparse: Vec<(PendingTensor, Tensor)> = Vec::new();
        let mut bucket: Vec<f32> = Vec::new();
        let mut members: Vec<Tensor> = Vec::new();
        let start_bucket =
            |bucket: &mut Vec<f32>,
             members: &mut Vec<Tensor>,
             pd: &mut Vec<(Pending<Vec<f32>>, Vec<Tensor>)>| {
                if members.is_empty() {
                    return;
                }
                let v = std::mem::take(bucket);
                let p = match self.algo {
                    Some(a) => self.comm.start_with(v, ReduceOp::Avg, a),
                    None => self.comm.start(v, ReduceOp::Avg),
                };
                pd.push((p, std::mem::take(members)));
            };
        for (name, var) in self.vars.iter().rev() {
            let g = var.grad();
            if !g.defined() {
                report.without_grad.push(name.clone());
                continue;
            }
            if g.is_sparse() {
                pending_sparse.push((self.comm.start_tensor(&g, ReduceOp::Avg, self.algo)?, g));
                continue;
            }
            check_cpu_f32(&g, name)?;
            let n = g.numel();
            let start = bucket.len();
            bucket.resize(start + n, 0.0);
            g.contiguous()
                .view(-1)
                .f_copy_data(&mut bucket[start..], n)
                .map_err(terr)?;
            members.push(g);
            if bucket.len() * 4 >= self.bucket_bytes {
                start_bucket(&mut bucket, &mut members, &mut pending_dense);
            }
        }
        start_bucket(&mut bucket, &mut members, &mut pending_dense);
        for (p, members) in pending_dense {
            let (v, info) = p.wait()?;
            report.buckets += 1;
            report.bytes_sent += info.bytes_sent;
            report.algos.push(info.algo);
            let mut off = 0;
            for mut g in members {
                let n = g.numel();
                let src = Tensor::from_slice(&v[off..off + n]).view(g.size().as_slice());
                tch::no_grad(|| g.f_copy_(&src)).map_err(terr)?;
                off += n;
            }
        }
        for (p, mut g) in pending_sparse {
            let (r, info) = p.wait()?;
            report.sparse_tensors += 1;
            report.bytes_sent += info.bytes_sent;
            report.algos.push(info.algo);
            tch::no_grad(|| g.f_copy_(&r)).map_err(terr)?;
        }
        report.comm_time = t0.elapsed();
        Ok(report)
    }
}
