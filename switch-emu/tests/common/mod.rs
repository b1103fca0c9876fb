//! Pieces the switch's QUIC tests share.
#![allow(dead_code)] // each test crate uses its own subset

use sketchreduce_wire::control::{Request, Response};
use sketchreduce_wire::JobSpec;

/// A single-threaded tokio runtime for one test.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Over QUIC control streams, `creator` creates the job `spec` and `joiner` joins it; returns
/// the job's epoch (the join must report the same one).
pub async fn create_and_join(
    creator: &quinn::Connection,
    joiner: &quinn::Connection,
    spec: JobSpec,
) -> u32 {
    let id = spec.id;
    let create = Request::Create {
        spec,
        replace: false,
        lease_ms: 60_000,
    };
    let epoch = match sketchreduce_quic::control_call(creator, None, &create)
        .await
        .unwrap()
    {
        Response::Created { epoch } => epoch,
        other => panic!("{other:?}"),
    };
    match sketchreduce_quic::control_call(joiner, None, &Request::Join { job: id })
        .await
        .unwrap()
    {
        Response::Joined(s) => assert_eq!(s.epoch, epoch),
        other => panic!("{other:?}"),
    }
    epoch
}
