//! Data-parallel training over a tch `VarStore`, shaped like PyTorch's
//! `DistributedDataParallel(find_unused_parameters=True)`.
//!
//! # Semantics
//! * [`DistributedDataParallel::new`] checks that every rank registered the same variables
//!   (names, shapes, dtypes; [`CollectiveError::LayoutMismatch`] names the first rank that
//!   differs from rank 0), then broadcasts every variable — parameters and buffers — from
//!   rank 0, so all copies of the model start identical whatever each rank initialised.
//! * The layout is fixed: every trainable parameter has a slot, in reverse registration order
//!   (the order backward produces gradients), whether or not this rank has a gradient for it.
//!   Dense gradients share buckets of about [`DistributedDataParallel::bucket_bytes`];
//!   sparse gradients (e.g. `nn::embedding` with `sparse: true`) are one operation each.
//!   Which parameters travel sparse is agreed at the first
//!   [`DistributedDataParallel::sync_gradients`] from the gradients every rank has then
//!   (sparse on some rank and dense on none → sparse), and fixed from then on.
//! * After [`DistributedDataParallel::sync_gradients`] every parameter's gradient is the
//!   average over ranks of the ranks' gradients, a rank without a gradient contributing zeros
//!   — as torch DDP with `find_unused_parameters=True`. A rank without a gradient for a
//!   parameter some other rank used gets one; a parameter no rank used keeps an undefined
//!   gradient ([`DdpReport::unused`]).
//! * Every operation carries a hash of the layout, so ranks whose models differ fail with
//!   [`CollectiveError::LayoutMismatch`] instead of averaging unrelated numbers, and a NaN or
//!   ±Inf fails every rank with [`CollectiveError::NonFiniteGradient`] naming the parameter
//!   and element (the communicator stays usable, the gradients are left as they were).
//! * Each bucket keeps a stable key from one step to the next, so the in-network path sizes
//!   its sketch from the same bucket's previous result.
//!
//! libtorch offers no gradient hooks through tch, so communication overlaps with packing and
//! with the other buckets, not with backward itself.

use crate::comm::{as_dense, Communicator, Pending};
use crate::config::{fnv1a, Algo};
use crate::error::{CollectiveError, Result};
use crate::reduce::{Collective, OpInfo, OpRequest, Payload, ReduceOp};
use crate::sparse::SparseVec;
use crate::tensor::{check_cpu_f32, sparse_to_vec, tensor_bytes, terr, vec_to_sparse};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

/// Default gradient bucket size, as in PyTorch DDP.
pub const DEFAULT_BUCKET_BYTES: usize = 25 << 20;

const LAYOUT_WHAT: &str = "parameter layout (names, shapes, dtypes)";

/// What one [`DistributedDataParallel::sync_gradients`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DdpReport {
    /// Dense buckets all-reduced.
    pub buckets: usize,
    /// Sparse gradients all-reduced (one operation each, not bucketed).
    pub sparse_tensors: usize,
    /// Parameters without a gradient on this rank (they contributed zeros), by name, in
    /// registration order.
    pub without_grad: Vec<String>,
    /// Parameters without a gradient on every rank: their gradient stays undefined.
    pub unused: Vec<String>,
    /// Bytes sent by this rank.
    pub bytes_sent: u64,
    /// Wall time from the first submission to the last result.
    pub comm_time: Duration,
    /// Algorithm of each operation, in order (dense buckets and sparse tensors).
    pub algos: Vec<Algo>,
}

/// One operation of the fixed layout.
#[derive(Debug, Clone)]
enum Slot {
    /// Dense parameters packed one after the other.
    Bucket {
        members: Vec<usize>,
        offsets: Vec<usize>,
        len: usize,
        key: u64,
    },
    /// One parameter reduced as a sparse vector of blocks.
    Sparse {
        param: usize,
        sparse_dim: i64,
        key: u64,
    },
}

/// Data-parallel gradient averaging over a `VarStore`: call
/// [`Self::sync_gradients`] after `backward()` and before the optimizer step. See the
/// module docs for the exact semantics.
pub struct DistributedDataParallel {
    comm: Arc<Communicator>,
    vars: Vec<(String, Tensor)>,
    shapes: Vec<Vec<i64>>,
    layout: u64,
    /// Target bucket size in bytes (a bucket closes once it reaches it). Read at the first
    /// [`Self::sync_gradients`], which fixes the buckets.
    pub bucket_bytes: usize,
    /// Algorithm for every operation (`None`: the communicator's).
    pub algo: Option<Algo>,
    plan: Mutex<Option<Arc<Vec<Slot>>>>,
    warned: AtomicBool,
}

/// Trainable variables in registration order, named.
fn trainable(vs: &tch::nn::VarStore) -> Vec<(String, Tensor)> {
    let names: std::collections::HashMap<usize, String> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (t.data_ptr() as usize, n))
        .collect();
    vs.trainable_variables()
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let name = names
                .get(&(t.data_ptr() as usize))
                .cloned()
                .unwrap_or_else(|| format!("param{i}"));
            (name, t)
        })
        .collect()
}

/// Every variable (parameters and buffers), sorted by name.
fn all_variables(vs: &tch::nn::VarStore) -> Vec<(String, Tensor)> {
    let mut all: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

fn describe(name: &str, t: &Tensor) -> String {
    format!("{name} {:?} {:?}", t.size(), t.kind())
}

/// One line per variable: the trainable ones in registration order, then the others by name.
fn layout_lines(params: &[(String, Tensor)], vs: &tch::nn::VarStore) -> Vec<String> {
    let mut lines: Vec<String> = params
        .iter()
        .map(|(n, t)| format!("param {}", describe(n, t)))
        .collect();
    for (n, t) in all_variables(vs) {
        if !params.iter().any(|(p, _)| *p == n) {
            lines.push(format!("buffer {}", describe(&n, &t)));
        }
    }
    lines
}

/// Compares every rank's layout with rank 0's; the same error on every rank.
fn check_layouts(comm: &Communicator, lines: &[String]) -> Result<()> {
    let all = comm.all_gather_bytes(lines.join("\n").into_bytes())?;
    let text: Vec<String> = all
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    let ref0: Vec<&str> = text[0].split('\n').collect();
    for (r, t) in text.iter().enumerate().skip(1) {
        let mine: Vec<&str> = t.split('\n').collect();
        if mine == ref0 {
            continue;
        }
        let detail = match mine.iter().zip(&ref0).position(|(a, b)| a != b) {
            Some(i) => format!(
                "variable #{i}: rank {r} has `{}`, rank 0 has `{}`",
                mine[i], ref0[i]
            ),
            None => format!(
                "rank {r} has {} variables, rank 0 has {} (first extra: `{}`)",
                mine.len(),
                ref0.len(),
                if mine.len() > ref0.len() {
                    mine[ref0.len()]
                } else {
                    ref0[mine.len()]
                }
            ),
        };
        return Err(CollectiveError::LayoutMismatch { rank: r, detail });
    }
    Ok(())
}

/// Overwrites every variable of `vs` (parameters and buffers, any dtype) with rank `src`'s,
/// bit for bit. Every rank must have the same variables (names, shapes, dtypes). Used by
/// [`DistributedDataParallel::new`]; call it again e.g. after loading a checkpoint on one
/// rank.
pub fn broadcast_variables(
    comm: &Communicator,
    vs: &tch::nn::VarStore,
    src: usize,
) -> Result<OpInfo> {
    let vars = all_variables(vs);
    let lines: Vec<String> = vars.iter().map(|(n, t)| describe(n, t)).collect();
    let mut req = OpRequest::bytes(Collective::Broadcast, Vec::new(), src);
    req.check = (
        fnv1a(lines.join("\n").as_bytes()),
        "variables (names, shapes, dtypes)",
    );
    let mut blob = Vec::new();
    for (n, t) in &vars {
        match tensor_bytes(t) {
            Ok(b) => blob.extend_from_slice(&b),
            Err(e) => {
                req.problem = Some(format!("variable {n}: {e}"));
                break;
            }
        }
    }
    req.data = crate::reduce::Data::Bytes(blob);
    let (blob, info) = comm.submit(req, crate::comm::as_bytes).wait()?;
    let want: usize = vars
        .iter()
        .map(|(_, t)| t.numel() * t.kind().elt_size_in_bytes())
        .sum();
    if blob.len() != want {
        return Err(CollectiveError::Mismatch(format!(
            "broadcast of the variables from rank {src}: {} bytes, {want} expected",
            blob.len()
        )));
    }
    let mut off = 0;
    for (_, t) in &vars {
        let n = t.numel() * t.kind().elt_size_in_bytes();
        let src_t =
            Tensor::f_from_data_size(&blob[off..off + n], &t.size(), t.kind()).map_err(terr)?;
        let mut t = t.shallow_clone();
        tch::no_grad(|| t.f_copy_(&src_t)).map_err(terr)?;
        off += n;
    }
    Ok(info)
}

/// Row-major coordinates of flat element `i` in `shape`.
fn unravel(mut i: u64, shape: &[i64]) -> Vec<i64> {
    let mut c = vec![0i64; shape.len()];
    for (k, &d) in shape.iter().enumerate().rev() {
        let d = d.max(1) as u64;
        c[k] = (i % d) as i64;
        i /= d;
    }
    c
}

fn numel(shape: &[i64]) -> usize {
    shape.iter().product::<i64>().max(0) as usize
}

/// Gives `var` a zero gradient (tch cannot assign `.grad`; a backward through zero does),
/// sparse for a 2-D parameter reduced sparse along dim 0 (as `nn::embedding` produces).
fn define_grad(var: &Tensor, sparse_dim: Option<i64>) -> Result<Tensor> {
    tch::with_grad(|| -> Result<()> {
        let zero = if sparse_dim == Some(1) && var.dim() == 2 {
            let none = Tensor::zeros([0], (Kind::Int64, var.device()));
            Tensor::f_embedding(var, &none, -1, false, true)
                .map_err(terr)?
                .sum(Kind::Float)
        } else {
            var.sum(Kind::Float) * 0.0
        };
        zero.f_backward().map_err(terr)
    })?;
    Ok(var.grad())
}

enum PendingSlot {
    Dense(Pending<Vec<f32>>),
    Sparse(Pending<SparseVec>),
}

enum Reduced {
    Dense(Vec<f32>),
    Sparse(SparseVec),
}

impl DistributedDataParallel {
    /// Wraps the trainable variables of `vs` (in registration order): checks that every rank
    /// has the same variables, then broadcasts every variable from rank 0 (collective: every
    /// rank must call it).
    pub fn new(comm: Arc<Communicator>, vs: &tch::nn::VarStore) -> Result<Self> {
        let vars = trainable(vs);
        let lines = layout_lines(&vars, vs);
        check_layouts(&comm, &lines)?;
        broadcast_variables(&comm, vs, 0)?;
        let layout = fnv1a(lines.join("\n").as_bytes());
        Ok(DistributedDataParallel {
            shapes: vars.iter().map(|(_, t)| t.size()).collect(),
            comm,
            vars,
            layout,
            bucket_bytes: DEFAULT_BUCKET_BYTES,
            algo: None,
            plan: Mutex::new(None),
            warned: AtomicBool::new(false),
        })
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

    /// Hash of the layout every operation is checked against.
    pub fn layout_hash(&self) -> u64 {
        self.layout
    }

    fn key(&self, what: &str, i: usize) -> u64 {
        let mut b = self.layout.to_le_bytes().to_vec();
        b.extend_from_slice(what.as_bytes());
        b.extend_from_slice(&(i as u64).to_le_bytes());
        fnv1a(&b)
    }

    /// The fixed sequence of operations, agreed at the first call (see the module docs).
    fn plan(&self) -> Result<Arc<Vec<Slot>>> {
        let mut guard = self.plan.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = guard.as_ref() {
            return Ok(p.clone());
        }
        // 0: no gradient, 255: dense, s in 1..=254: sparse with s sparse dimensions.
        let kinds: Vec<u8> = self
            .vars
            .iter()
            .map(|(_, v)| {
                let g = v.grad();
                match (g.defined(), g.defined() && g.is_sparse()) {
                    (false, _) => 0,
                    (true, true) => g.sparse_dim().clamp(1, 254) as u8,
                    (true, false) => 255,
                }
            })
            .collect();
        let req = OpRequest {
            equal_len: true,
            check: (self.layout, LAYOUT_WHAT),
            ..OpRequest::bytes(Collective::AllGather, kinds, 0)
        };
        let (all, _) = self.comm.submit(req, crate::comm::as_gathered).wait()?;
        let mut slots = Vec::new();
        let (mut members, mut offsets, mut len) = (Vec::new(), Vec::new(), 0usize);
        for p in (0..self.vars.len()).rev() {
            let ks: Vec<u8> = all.iter().map(|k| k[p]).collect();
            let sparse: Vec<u8> = ks.iter().copied().filter(|&k| k != 0 && k != 255).collect();
            let dense = ks.contains(&255);
            let sparse_dim = match sparse.first() {
                Some(&s) if !dense && sparse.iter().all(|&x| x == s) => Some(s as i64),
                _ => None,
            };
            if let Some(sparse_dim) = sparse_dim {
                slots.push(Slot::Sparse {
                    param: p,
                    sparse_dim,
                    key: self.key("sparse", p),
                });
                continue;
            }
            members.push(p);
            offsets.push(len);
            len += numel(&self.shapes[p]);
            if len * 4 >= self.bucket_bytes {
                slots.push(Slot::Bucket {
                    members: std::mem::take(&mut members),
                    offsets: std::mem::take(&mut offsets),
                    len: std::mem::take(&mut len),
                    key: self.key("bucket", slots.len()),
                });
            }
        }
        if !members.is_empty() {
            slots.push(Slot::Bucket {
                members,
                offsets,
                len,
                key: self.key("bucket", slots.len()),
            });
        }
        let plan = Arc::new(slots);
        *guard = Some(plan.clone());
        Ok(plan)
    }

    fn request(
        &self,
        payload: Payload,
        key: u64,
        used: Vec<u8>,
        problem: Option<String>,
    ) -> OpRequest {
        OpRequest {
            key: Some(key),
            check: (self.layout, LAYOUT_WHAT),
            used,
            problem,
            ..OpRequest::all_reduce(
                payload,
                ReduceOp::Avg,
                self.algo.unwrap_or(self.comm.config().algo),
            )
        }
    }

    /// Copies parameter `p`'s gradient into `dst` (densifying a sparse one).
    fn pack_dense(&self, p: usize, g: &Tensor, dst: &mut [f32]) -> Result<()> {
        let name = &self.vars[p].0;
        let g = if g.is_sparse() {
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "gradient of {name} is sparse on this rank but dense on another (or appeared after the first step): reduced densely"
                );
            }
            g.f_to_dense(None, false).map_err(terr)?
        } else {
            g.shallow_clone()
        };
        check_cpu_f32(&g, name)?;
        if g.size() != self.shapes[p] {
            return Err(CollectiveError::Input(format!(
                "gradient of {name} has shape {:?}, the parameter {:?}",
                g.size(),
                self.shapes[p]
            )));
        }
        g.contiguous()
            .view(-1)
            .f_copy_data(dst, dst.len())
            .map_err(terr)
    }

    /// Parameter `p`'s gradient as a sparse vector along `sparse_dim` (empty if undefined).
    fn pack_sparse(&self, p: usize, g: &Tensor, sparse_dim: i64) -> Result<SparseVec> {
        let shape = &self.shapes[p];
        let sd = (sparse_dim as usize).min(shape.len());
        if !g.defined() {
            return Ok(SparseVec::zeros(
                numel(&shape[..sd]),
                numel(&shape[sd..]).max(1),
            ));
        }
        let g = if !g.is_sparse() {
            g.f_to_sparse_sparse_dim(sparse_dim).map_err(terr)?
        } else if g.sparse_dim() != sparse_dim {
            g.f_to_dense(None, false)
                .and_then(|d| d.f_to_sparse_sparse_dim(sparse_dim))
                .map_err(terr)?
        } else {
            g.shallow_clone()
        };
        Ok(sparse_to_vec(&g)?.0)
    }

    /// Names the parameter and element of a non-finite value found in `slot`.
    fn locate(&self, slot: &Slot, e: CollectiveError) -> CollectiveError {
        let CollectiveError::NonFinite { rank, position } = e else {
            return e;
        };
        let (p, flat) = match slot {
            Slot::Sparse { param, .. } => (*param, position),
            Slot::Bucket {
                members, offsets, ..
            } => {
                let j = offsets
                    .partition_point(|&o| o as u64 <= position)
                    .saturating_sub(1);
                (members[j], position - offsets[j] as u64)
            }
        };
        CollectiveError::NonFiniteGradient {
            rank,
            param: self.vars[p].0.clone(),
            index: unravel(flat, &self.shapes[p]),
        }
    }

    /// Averages every gradient over all ranks, in place. See the module docs.
    pub fn sync_gradients(&self) -> Result<DdpReport> {
        let t0 = Instant::now();
        let plan = self.plan()?;
        let mut report = DdpReport::default();
        let grads: Vec<Tensor> = self.vars.iter().map(|(_, v)| v.grad()).collect();
        for (g, (name, _)) in grads.iter().zip(&self.vars) {
            if !g.defined() {
                report.without_grad.push(name.clone());
            }
        }
        let mut pending = Vec::with_capacity(plan.len());
        for slot in plan.iter() {
            match slot {
                Slot::Bucket {
                    members,
                    offsets,
                    len,
                    key,
                } => {
                    let mut buf = vec![0f32; *len];
                    let mut used = vec![0u8; members.len().div_ceil(8)];
                    let mut problem = None;
                    for (j, &p) in members.iter().enumerate() {
                        let g = &grads[p];
                        if !g.defined() {
                            continue; // contributes zeros, as torch DDP
                        }
                        used[j / 8] |= 1 << (j % 8);
                        let dst = &mut buf[offsets[j]..offsets[j] + numel(&self.shapes[p])];
                        if let Err(e) = self.pack_dense(p, g, dst) {
                            problem.get_or_insert(e.to_string());
                        }
                    }
                    let req = self.request(Payload::Dense(buf.into()), *key, used, problem);
                    pending.push(PendingSlot::Dense(self.comm.submit(req, as_dense)));
                }
                Slot::Sparse {
                    param,
                    sparse_dim,
                    key,
                } => {
                    let g = &grads[*param];
                    let used = vec![g.defined() as u8];
                    let (sv, problem) = match self.pack_sparse(*param, g, *sparse_dim) {
                        Ok(sv) => (sv, None),
                        Err(e) => (SparseVec::zeros(0, 1), Some(e.to_string())),
                    };
                    let req = self.request(Payload::Sparse(sv), *key, used, problem);
                    pending.push(PendingSlot::Sparse(
                        self.comm.submit(req, crate::comm::as_sparse),
                    ));
                }
            }
        }
        // Wait for every operation (all ranks run all of them) before touching a gradient.
        let mut results = Vec::with_capacity(pending.len());
        let mut first_err = None;
        for (slot, p) in plan.iter().zip(pending) {
            let r = match p {
                PendingSlot::Dense(p) => p.wait_used().map(|(v, i, u)| (Reduced::Dense(v), i, u)),
                PendingSlot::Sparse(p) => p.wait_used().map(|(v, i, u)| (Reduced::Sparse(v), i, u)),
            };
            match r {
                Ok(r) => results.push(r),
                Err(e) => {
                    first_err.get_or_insert_with(|| self.locate(slot, e));
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        for (slot, (out, info, used)) in plan.iter().zip(results) {
            report.bytes_sent += info.bytes_sent;
            report.algos.push(info.algo);
            match (slot, out) {
                (
                    Slot::Bucket {
                        members, offsets, ..
                    },
                    Reduced::Dense(v),
                ) => {
                    report.buckets += 1;
                    for (j, &p) in members.iter().enumerate() {
                        if used.get(j / 8).is_none_or(|b| b & (1 << (j % 8)) == 0) {
                            report.unused.push(self.vars[p].0.clone());
                            continue;
                        }
                        let n = numel(&self.shapes[p]);
                        let src = Tensor::from_slice(&v[offsets[j]..offsets[j] + n])
                            .view(self.shapes[p].as_slice());
                        self.write_grad(p, &grads[p], &src, None)?;
                    }
                }
                (
                    Slot::Sparse {
                        param, sparse_dim, ..
                    },
                    Reduced::Sparse(s),
                ) => {
                    report.sparse_tensors += 1;
                    if used.first().is_none_or(|&b| b == 0) {
                        report.unused.push(self.vars[*param].0.clone());
                        continue;
                    }
                    let r = vec_to_sparse(&s, &self.shapes[*param], *sparse_dim)?;
                    self.write_grad(*param, &grads[*param], &r, Some(*sparse_dim))?;
                }
                _ => unreachable!("results follow the plan"),
            }
        }
        report
            .unused
            .sort_by_key(|n| self.vars.iter().position(|(v, _)| v == n));
        report.comm_time = t0.elapsed();
        Ok(report)
    }

    /// Stores `value` (dense, or sparse COO) as parameter `p`'s gradient, creating the
    /// gradient if this rank has none, in the form the gradient already has.
    fn write_grad(
        &self,
        p: usize,
        g: &Tensor,
        value: &Tensor,
        sparse_dim: Option<i64>,
    ) -> Result<()> {
        let mut g = if g.defined() {
            g.shallow_clone()
        } else {
            define_grad(&self.vars[p].1, sparse_dim)?
        };
        let value = match (g.is_sparse(), value.is_sparse()) {
            (true, false) => value.f_to_sparse_sparse_dim(g.sparse_dim()).map_err(terr)?,
            (false, true) => value.f_to_dense(None, false).map_err(terr)?,
            _ => value.shallow_clone(),
        };
        let value = if g.device() != Device::Cpu {
            value.f_to(g.device()).map_err(terr)?
        } else {
            value
        };
        tch::no_grad(|| g.f_copy_(&value)).map_err(terr)?;
        Ok(())
    }
}
