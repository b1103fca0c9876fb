//! tch integration (feature `tch`): collectives on `tch::Tensor`s. The DDP-shaped helper is
//! in [`crate::DistributedDataParallel`].
//!
//! Reductions take CPU `f32` tensors; broadcast and all-gather move raw bytes, so they are
//! exact for any dtype and device (data goes through host memory). Sparse COO tensors (e.g. the gradient of an
//! `nn::embedding` with `sparse: true`) are reduced without densifying: their sparse
//! dimensions are linearised into block indices, each block holding the dense trailing
//! dimensions (a whole embedding row), and sent as (index, block) pairs — or densified only if
//! the chosen algorithm is the dense ring.

use crate::comm::{Communicator, Pending};
use crate::config::Algo;
use crate::error::{CollectiveError, Result};
use crate::reduce::{Collective, OpInfo, OpRequest, ReduceOp};
use crate::sparse::SparseVec;
use tch::{Device, Kind, Tensor};

pub(crate) fn terr(e: tch::TchError) -> CollectiveError {
    CollectiveError::Tch(e.to_string())
}

pub(crate) fn check_cpu_f32(t: &Tensor, what: &str) -> Result<()> {
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
pub(crate) fn sparse_to_vec(t: &Tensor) -> Result<(SparseVec, Vec<i64>, i64)> {
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

pub(crate) fn vec_to_sparse(s: &SparseVec, size: &[i64], sparse_dim: i64) -> Result<Tensor> {
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

/// The raw bytes of a dense tensor of any dtype (row-major, native byte order), via the host.
pub fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>> {
    if t.is_sparse() {
        return Err(CollectiveError::Input(
            "raw bytes of a sparse tensor: convert it with to_dense first".into(),
        ));
    }
    let t = t.f_to(Device::Cpu).map_err(terr)?.contiguous();
    let n = t.numel();
    let mut b = vec![0u8; n * t.kind().elt_size_in_bytes()];
    t.f_copy_data_u8(&mut b, n).map_err(terr)?;
    Ok(b)
}

/// Hash of a tensor's shape and dtype, which every rank of a tensor collective must agree on.
pub(crate) fn shape_hash(size: &[i64], kind: Kind) -> u64 {
    crate::config::fnv1a(format!("{size:?} {kind:?}").as_bytes())
}

const SHAPE_WHAT: &str = "tensor shape and dtype";

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
        self.start_tensor_inner(t, op, algo, None)
    }

    /// [`Self::start_tensor`] under a stable key (see [`Communicator::start_keyed`]).
    pub fn start_tensor_keyed(
        &self,
        t: &Tensor,
        op: ReduceOp,
        algo: Option<Algo>,
        key: u64,
    ) -> Result<PendingTensor> {
        self.start_tensor_inner(t, op, algo, Some(key))
    }

    fn start_tensor_inner(
        &self,
        t: &Tensor,
        op: ReduceOp,
        algo: Option<Algo>,
        key: Option<u64>,
    ) -> Result<PendingTensor> {
        if t.is_sparse() {
            let (sv, size, sd) = sparse_to_vec(t)?;
            let p = match key {
                Some(k) => self.start_sparse_keyed(sv, op, algo, k),
                None => self.start_sparse(sv, op, algo),
            };
            Ok(PendingTensor {
                inner: PendingKind::Sparse(p, size, sd),
            })
        } else {
            let v = tensor_to_vec(t)?;
            let p = match (key, algo) {
                (Some(k), a) => self.start_keyed(v, op, a, k),
                (None, Some(a)) => self.start_with(v, op, a),
                (None, None) => self.start(v, op),
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

    /// Broadcast in place from rank `src` (like `torch.distributed.broadcast`): exact for any
    /// dtype (raw bytes). Every rank must pass a dense tensor of the same shape and dtype,
    /// else every rank gets [`CollectiveError::LayoutMismatch`] naming the first rank that
    /// differs from rank 0.
    pub fn broadcast_tensor_(&self, t: &mut Tensor, src: usize) -> Result<OpInfo> {
        let (size, kind) = (t.size(), t.kind());
        let mut req = OpRequest::bytes(Collective::Broadcast, Vec::new(), src);
        req.check = (shape_hash(&size, kind), SHAPE_WHAT);
        match tensor_bytes(t) {
            Ok(b) => req.data = crate::reduce::Data::Bytes(b),
            Err(e) => req.problem = Some(e.to_string()),
        }
        let (b, info) = self.submit(req, crate::comm::as_bytes).wait()?;
        let src_t = Tensor::f_from_data_size(&b, &size, kind).map_err(terr)?;
        tch::no_grad(|| t.f_copy_(&src_t)).map_err(terr)?;
        Ok(info)
    }

    /// All-gather of a dense tensor (like `torch.distributed.all_gather`): `out[r]` is rank
    /// r's tensor, exact for any dtype. Every rank must pass the same shape and dtype.
    pub fn all_gather_tensor(&self, t: &Tensor) -> Result<Vec<Tensor>> {
        let (size, kind) = (t.size(), t.kind());
        let mut req = OpRequest::bytes(Collective::AllGather, Vec::new(), 0);
        req.equal_len = true;
        req.check = (shape_hash(&size, kind), SHAPE_WHAT);
        match tensor_bytes(t) {
            Ok(b) => req.data = crate::reduce::Data::Bytes(b),
            Err(e) => req.problem = Some(e.to_string()),
        }
        let (blobs, _) = self.submit(req, crate::comm::as_gathered).wait()?;
        blobs
            .iter()
            .map(|b| Tensor::f_from_data_size(b, &size, kind).map_err(terr))
            .collect()
    }

    /// Reduce-scatter of a dense CPU f32 tensor along dim 0 (like
    /// `torch.distributed.reduce_scatter_tensor`): every rank passes `[world·k, …]` and rank r
    /// gets rows `r·k .. (r+1)·k` of the reduction, shape `[k, …]`.
    pub fn reduce_scatter_tensor(&self, t: &Tensor, op: ReduceOp) -> Result<(Tensor, OpInfo)> {
        let n = self.world_size() as i64;
        let size = t.size();
        let mut req = OpRequest {
            collective: Collective::ReduceScatter,
            check: (shape_hash(&size, t.kind()), SHAPE_WHAT),
            ..OpRequest::all_reduce(
                crate::reduce::Payload::Dense(Vec::new().into()),
                op,
                Algo::Ring,
            )
        };
        let rows = size.first().copied().unwrap_or(0);
        if size.is_empty() || rows % n != 0 {
            req.problem = Some(format!(
                "reduce-scatter needs dim 0 divisible by the world size {n}, got shape {size:?}"
            ));
        } else {
            match tensor_to_vec(t) {
                Ok(v) => {
                    req.data = crate::reduce::Data::Reduce(crate::reduce::Payload::Dense(v.into()))
                }
                Err(e) => req.problem = Some(e.to_string()),
            }
        }
        let (v, info) = self.submit(req, crate::comm::as_dense).wait()?;
        let mut out = size.clone();
        if let Some(d0) = out.first_mut() {
            *d0 /= n;
        }
        Ok((Tensor::from_slice(&v).view(out.as_slice()), info))
    }
}
